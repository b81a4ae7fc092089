"""The catalogue of operation kinds: what can be started, with which parameters, and how it undoes.

Kinds register themselves (``register_kind``) from modules that the app imports when Django
starts — an ``operation_kinds`` module of any installed app (the demo kinds of
``operations.contrib.demo`` among them, when it is installed) and the modules listed in
``TAP_KIND_MODULES`` — so web, worker and beat processes all know the same kinds. The engine
never imports a kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from importlib import import_module
from typing import Any

from django import forms
from django.conf import settings
from django.utils.module_loading import autodiscover_modules

from .conf import RETAINED_STATUSES, conf, retention_spec  # noqa: F401  (RETAINED_STATUSES: re-exported)
from .exceptions import InvalidParams, OperationError, UnknownKind

__all__ = ["AUTO_RECOVERY", "InvalidParams", "Kind", "KindForm", "OperationError", "Recovery", "UnknownKind",
           "all_kinds", "get_kind", "register_kind"]


#: JSON values a number field must refuse by their type: Django's fields read ``true`` as 1 and
#: ``null``, ``[]`` or ``{}`` as "left empty" (so as the default), which a JSON client never meant.
NOT_A_NUMBER = {bool: "true/false", type(None): "null", list: "a list", dict: "an object"}


class KindForm(forms.Form):
    """Base form of a kind's parameters; ``params()`` gives the JSON stored on the operation."""

    #: field name → its default, read whenever a form is built: a callable, or the name of a
    #: Django setting.
    setting_defaults: dict[str, Callable[[], Any] | str] = {}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        for name, source in self.setting_defaults.items():
            self.fields[name].initial = source() if callable(source) else getattr(settings, source)
        # Number fields (IntegerField, FloatField, DecimalField) given a JSON value of the wrong
        # type: the field never sees it, so neither it nor the form's clean() takes it for a number.
        self.type_errors = {
            name: f"must be a number, not {NOT_A_NUMBER[type(value)]}"
            for name, value in self.data.items()
            if isinstance(self.fields.get(name), forms.IntegerField) and type(value) in NOT_A_NUMBER
        }
        if self.type_errors:
            self.data = {name: value for name, value in self.data.items() if name not in self.type_errors}

    def full_clean(self):
        super().full_clean()
        for name, message in self.type_errors.items():
            self._errors[name] = self.error_class([message])
            self.cleaned_data.pop(name, None)

    def param_value(self, name: str, value: Any) -> Any:
        """One parameter cleaned as ``params()`` cleans it (an edit of a paused operation)."""
        field = self.fields[name]
        cleaned = field.clean(value)
        return _jsonable(field.initial if cleaned in (None, "") else cleaned)

    def params(self) -> dict[str, Any]:
        """Cleaned values as JSON; an optional field left empty takes its ``initial`` default."""
        return {
            name: _jsonable(self.fields[name].initial if value in (None, "") else value)
            for name, value in self.cleaned_data.items()
        }


def _jsonable(value):
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


@dataclass(frozen=True)
class Recovery:
    """How beat brings back an interrupted operation of a kind; None fields take the settings'
    defaults (TAP_AUTO_RESUME, TAP_AUTO_RESUME_ATTEMPTS, TAP_AUTO_RESUME_BACKOFF, TAP_POISON_LIMIT)."""

    auto_resume: bool | None = None
    attempts: int | None = None
    backoff: float | None = None
    poison_limit: int | None = None

    def resolved(self) -> Recovery:
        return Recovery(
            auto_resume=conf.AUTO_RESUME if self.auto_resume is None else self.auto_resume,
            attempts=conf.AUTO_RESUME_ATTEMPTS if self.attempts is None else self.attempts,
            backoff=conf.AUTO_RESUME_BACKOFF if self.backoff is None else self.backoff,
            poison_limit=conf.POISON_LIMIT if self.poison_limit is None else self.poison_limit,
        )

    def delay(self, attempt: int) -> float:
        """Seconds before automatic resume number ``attempt`` (1, 2, …): doubling, at most 10 min."""
        return min(600.0, float(self.backoff) * 2 ** max(0, attempt - 1))


#: Recovery on by default: what the demo kinds (and any kind that asks for it) use.
AUTO_RECOVERY = Recovery(auto_resume=True)


@dataclass(frozen=True)
class Kind:
    """An operation type: its parameters (a form), how to build its chain, and how it undoes."""

    name: str
    label: str
    form: type[KindForm]
    #: params → a Celery chain (or list of signatures) of registered steps.
    build: Callable[[dict], Any]
    description: str = ""
    #: operation → a note saying what was undone; runs in the cancel's transaction.
    compensate: Callable[[Any], str] | None = None
    #: Shown before a user confirms a cancel.
    cancel_effect: str = "Nothing to undo: this operation writes no data."
    #: At most this many unfinished operations of this kind (per user, or globally); a callable
    #: is asked at every start (e.g. to read a setting).
    max_concurrent: int | Callable[[], int | None] | None = None
    concurrency_scope: str = "user"
    pause_every: int = 1
    #: "steps": progress counts finished steps; "custom": the steps report their own units.
    progress: str = "steps"
    progress_unit: str = "steps"
    #: operation → rows of data it has stored right now (``operations count``).
    count_rows: Callable[[Any], int] | None = None
    #: (cleaned params, files) → params: e.g. stores an upload and records its path.
    prepare: Callable[[dict, Any], dict] | None = None
    #: How an interrupted operation comes back (None: the settings' defaults).
    recovery: Recovery | None = None
    #: Parameters the steps need but no face shows (a server path): pages, admin, API and CLI
    #: show the others (``selectors.shown_params``).
    hidden_params: tuple[str, ...] = ()
    #: result → (column names, rows): how people read the result, as a table on the page and a
    #: CSV download (None: the result is shown as JSON, and downloadable whole).
    result_table: Callable[[Any], tuple[list[str], list[list[Any]]]] | None = None
    #: params → the worker-seconds an operation will ask for (steps × delay, tasks × seconds),
    #: checked against the owner's quota (TAP_USER_MAX_WORK_SECONDS, OperationQuota); None: free.
    work_seconds: Callable[[dict], float] | None = None
    #: params → the New form's initial values to "Start again" from an operation (None: its
    #: params, less the hidden ones). A file upload cannot be filled in: people choose it again.
    start_again: Callable[[dict], dict] | None = None
    #: Parameters a person may change while the operation is paused (``operation_edit``), e.g. an
    #: import's ``rows_per_second`` and ``chunk_rows``: the plan is built again from the edited
    #: parameters, and its remaining steps replace the stored ones.
    editable: tuple[str, ...] = ()
    #: Seconds from the start by which an operation of this kind must have ended (None: no
    #: deadline; ``operation_start(deadline=…)`` sets one per operation). Beat ends a late one.
    deadline: float | None = None
    #: What a passed deadline or step time limit does: "fail" (the error names it; a retry
    #: gets the deadline's length again) or "cancel" (with the kind's compensation).
    on_deadline: str = "fail"
    #: Seconds one execution of a step may take (None: no limit; a step's own ``time_limit``
    #: option, ``task.s().set(time_limit=30)``, comes first). Beat stops one that overruns, as a
    #: terminate does, then ends the operation as ``on_deadline`` says.
    step_time_limit: float | None = None
    #: "HH:MM-HH:MM" (TIME_ZONE; may wrap midnight): operations of this kind never run then — beat
    #: pauses a running one when the window opens and resumes it when it closes. A start's own
    #: ``pause_window`` comes first.
    pause_window: str = ""
    #: Days to keep finished operations of this kind, by status ({"completed": 30, ...}); the
    #: statuses it leaves out take TAP_RETENTION's. Beat deletes older ones in batches.
    retention: dict[str, float] | None = None

    def start_again_initial(self, params: dict) -> dict:
        initial = self.start_again(dict(params)) if self.start_again else dict(params)
        if not self.start_again:
            initial = {name: value for name, value in initial.items() if name not in self.hidden_params}
        return {name: value for name, value in initial.items() if name in self.form.base_fields}


    def recovery_policy(self) -> Recovery:
        return (self.recovery or Recovery()).resolved()

    def concurrency_limit(self) -> int | None:
        limit = self.max_concurrent() if callable(self.max_concurrent) else self.max_concurrent
        return limit or None


KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    """Add ``kind`` to the catalogue (from an ``operation_kinds`` module, imported in every process)."""
    if kind.concurrency_scope not in {"user", "global"}:
        raise ValueError(f"kind {kind.name}: concurrency_scope must be 'user' or 'global'")
    if kind.retention is not None and retention_spec(kind.retention):
        raise ValueError(f"kind {kind.name}: retention is {retention_spec(kind.retention)}")
    if kind.pause_window:
        from .windows import parse_window

        parse_window(kind.pause_window)  # a ValueError names what is wrong
    if kind.on_deadline not in {"fail", "cancel"}:
        raise ValueError(f"kind {kind.name}: on_deadline must be 'fail' or 'cancel', not {kind.on_deadline!r}")
    for name, value in (("deadline", kind.deadline), ("step_time_limit", kind.step_time_limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ValueError(f"kind {kind.name}: {name} is a number of seconds above 0, or None, not {value!r}")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        known = ", ".join(sorted(KINDS)) or "none"
        raise UnknownKind(f"unknown operation kind '{name}'; known kinds: {known}") from None


def all_kinds() -> list[Kind]:
    return [KINDS[name] for name in sorted(KINDS)]


def kept_days(kind: Kind | None, status: str) -> float | None:
    """Days a finished operation of ``kind`` in ``status`` is kept: the kind's, else TAP_RETENTION's
    (None: forever)."""
    own = (kind.retention if kind is not None else None) or {}
    return own[status] if status in own else conf.RETENTION.get(status)


def autodiscover() -> None:
    autodiscover_modules("operation_kinds")
    for module in conf.KIND_MODULES:
        import_module(module)
