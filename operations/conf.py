"""Every setting of the operations app, with its default, in one place (docs/settings.md).

All of them are optional. A value is read when it is used, never at import or migrate time, so a
host can change one in its settings (or a test with ``override_settings``) and the next use sees
it. A value of the wrong type raises ImproperlyConfigured naming the setting where it is used, and
``manage.py check`` reports it first (operations.E001).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

PREFIX = "TAP_"


@dataclass(frozen=True)
class Option:
    """One setting: its default (a value, or a callable for defaults derived from other
    settings) and a check that returns what is wrong with a value, or None."""

    name: str
    default: Any
    check: Callable[[Any], str | None]
    doc: str


# --- value checks: each returns None when the value is fine, else what it should be -----------


def positive_number(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    return None if ok else "a positive number of seconds"


def positive_int(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return None if ok else "a positive integer"


def non_negative_int(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return None if ok else "an integer, 0 or more"


def positive_int_or_none(value: Any) -> str | None:
    return None if value is None else positive_int(value)


def non_negative_number(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    return None if ok else "a number of seconds, 0 or more"


def non_negative_number_or_none(value: Any) -> str | None:
    return None if value is None else non_negative_number(value)


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "True or False"


def module_names(value: Any) -> str | None:
    ok = isinstance(value, (list, tuple)) and all(isinstance(item, str) and item for item in value)
    return None if ok else "a list of dotted module paths"


def path_or_none(value: Any) -> str | None:
    return None if value is None or isinstance(value, (str, Path)) and str(value) else "a folder path (or None)"


#: The statuses retention may delete (the others are unfinished).
RETAINED_STATUSES = ("completed", "cancelled", "failed")


def retention_spec(value: Any) -> str | None:
    """{"completed": 30, "cancelled": 90, "failed": 90}: days per finished status (None: keep)."""
    what = ("a dict of finished statuses (completed, cancelled, failed) to days to keep them "
            "(a positive number, or None to keep them forever)")
    if not isinstance(value, dict) or set(value) - set(RETAINED_STATUSES):
        return what
    for days in value.values():
        if days is not None and (isinstance(days, bool) or not isinstance(days, (int, float)) or days <= 0):
            return what
    return None


def rate_or_none(value: Any) -> str | None:
    """A DRF throttle rate such as "120/min" (None: no limit)."""
    if value is None:
        return None
    if isinstance(value, str) and "/" in value:
        count, _, period = value.partition("/")
        if count.isdigit() and period[:1] in {"s", "m", "h", "d"}:
            return None
    return 'a rate such as "120/min" (requests per s, m, h or d), or None'


def dotted_paths_or_none(value: Any) -> str | None:
    return None if value is None else module_names(value)


class AppSettings:
    """Attribute access to settings ``<prefix><NAME>``: ``conf.HEARTBEAT_LEASE``."""

    #: Every instance (the app's, and those of its contrib apps): ``manage.py check`` checks them all.
    instances: list[AppSettings] = []

    def __init__(self, prefix: str, options: list[Option]):
        self._prefix = prefix
        self._options = {option.name: option for option in options}
        AppSettings.instances.append(self)

    def setting_name(self, name: str) -> str:
        return self._prefix + name

    def options(self) -> list[Option]:
        return list(self._options.values())

    def __getattr__(self, name: str) -> Any:
        # Read at every use (about a microsecond): nothing to invalidate when a setting changes.
        if name.startswith("_"):
            raise AttributeError(name)
        value, problem = self._read(name)
        if problem:
            raise ImproperlyConfigured(problem)
        return value

    def _read(self, name: str) -> tuple[Any, str | None]:
        try:
            option = self._options[name]
        except KeyError:
            raise AttributeError(f"{self._prefix}{name} is not a setting of this app") from None
        setting = self.setting_name(name)
        missing = object()
        value = getattr(settings, setting, missing)
        if value is missing:
            default = option.default
            return (default() if callable(default) else default), None
        expected = option.check(value)
        if expected:
            return value, f"{setting} must be {expected}, not {value!r}"
        return value, None

    def problems(self) -> list[tuple[str, str]]:
        """(setting, message) for every setting whose value is unusable."""
        found = []
        for name in self._options:
            _, problem = self._read(name)
            if problem:
                found.append((self.setting_name(name), problem))
        return found


def _default_upload_dir() -> Path | None:
    return Path(settings.MEDIA_ROOT) / "operations" / "uploads" if settings.MEDIA_ROOT else None


OPTIONS = [
    Option("HEARTBEAT_LEASE", 120, positive_number,
           "Seconds an active operation may go without a heartbeat before beat calls it interrupted. "
           "Workers beat every lease / 4 while a step runs."),
    Option("RECONCILE_INTERVAL", 30, positive_number,
           "Seconds between two runs of the reconciler, a thread of beat's own process."),
    Option("AUTO_RESUME", False, boolean,
           "Whether beat resumes interrupted operations by itself (kinds may say otherwise: Kind.recovery)."),
    Option("AUTO_RESUME_ATTEMPTS", 5, positive_int,
           "Automatic resumes of an operation in a row without progress between them; then a person decides."),
    Option("AUTO_RESUME_BACKOFF", 5, positive_number,
           "Seconds before the first automatic resume; each further one waits twice as long (at most 10 min)."),
    Option("POISON_LIMIT", 3, positive_int,
           "Workers lost while running the same step without it getting further (killed, out of "
           "memory, gone silent) after which the operation fails, saying so, instead of starting it again."),
    Option("TERMINATE_TIMEOUT", 2.0, positive_number,
           "Seconds a terminate waits for the workers to say they stopped the operation's step; "
           "it cancels the operation after that in any case."),
    Option("WATCHDOG_TIMEOUT", 60, non_negative_number,
           "Seconds a step received by a worker may wait for a free pool process that never takes it "
           "before the worker counts as wedged and exits, for its supervisor to start a new one (0: off)."),
    Option("DURABLE_STEP_COMMITS", False, boolean,
           "PostgreSQL: whether a step's advance waits for the WAL flush. Off, a database crash can undo "
           "the last fraction of a second of advances, each with its step's own writes, so those steps "
           "run again. Status changes always commit durably, and in-step checkpoints do unless their step "
           "says otherwise (the demo csv_import's chunks follow this setting: a chunk and its cursor "
           "commit, or are undone, together)."),
    Option("STICKY_STEPS", 100, non_negative_int,
           "Steps a worker runs one after the other without a broker round trip when the next step "
           "of a chain is due on the same queue (sticky continuation), before it hands the rest to "
           "the broker, behind the other operations' steps. 0 or 1: every step through the broker. "
           "PostgreSQL only (SQLite has one writer: a slice would hold off a person's pause), and only "
           "for kinds whose recovery resumes by itself: a slice lost with its worker is brought back "
           "by beat, not by the broker."),
    Option("STICKY_SECONDS", 1.0, non_negative_number,
           "At most this long per sticky slice, however few steps it ran: long chains of slow "
           "steps hand over to the broker as often as this, so they cannot starve other operations."),
    Option("RETENTION", {"completed": 30, "cancelled": 90, "failed": 90}, retention_spec,
           "Days beat keeps finished operations, by status, before it deletes them with their events, "
           "step data and stored rows; None (or a status left out) keeps them forever. A kind's own "
           "Kind.retention wins for that kind. {} turns retention off."),
    Option("RETENTION_INTERVAL", 600, positive_number,
           "Seconds between two retention rounds of beat (each deletes what is due, in batches)."),
    Option("RETENTION_BATCH", 200, positive_int,
           "Operations retention deletes per transaction: a batch's rows are gone in one commit, "
           "and no lock is held longer than one batch takes."),
    Option("KIND_MODULES", [], module_names,
           "Modules that register operation kinds, besides each installed app's operation_kinds module."),
    Option("UPLOAD_DIR", _default_upload_dir, path_or_none,
           "Where files uploaded to a start are kept while their operation may read them. Default: "
           "MEDIA_ROOT/operations/uploads. Every web and worker process must see the same folder."),
    Option("CONTROL_THROTTLE", "120/min", rate_or_none,
           "Rate limit of the API's state changes per user (starts and verbs); None turns it off. "
           "A rate for the scope operation_control in REST_FRAMEWORK's DEFAULT_THROTTLE_RATES wins."),
    Option("API_PAGE_SIZE", 50, positive_int, "Operations per page of GET /api/operations/."),
    Option("USER_MAX_UNFINISHED", None, positive_int_or_none,
           "Operations a user (not staff) may have running, paused or interrupted at once; None: no limit. "
           "A staff member sets a user's own in the admin (Operation quotas)."),
    Option("USER_MAX_WORK_SECONDS", None, non_negative_number_or_none,
           "Worker-seconds one operation of a user (not staff) may ask for, as its kind estimates them "
           "(steps × delay, tasks × seconds); None: no limit. Per user in the admin (Operation quotas)."),
    Option("MAX_JSON_DEPTH", 32, positive_int,
           "How deep JSON that people send (API bodies, JSON parameters) may nest; deeper is a 400 naming "
           "this limit, not a RecursionError."),
    Option("API_AUTHENTICATION_CLASSES", None, dotted_paths_or_none,
           "DRF authentication classes of the app's API. Default: REST_FRAMEWORK's "
           "DEFAULT_AUTHENTICATION_CLASSES, with TokenAuthentication first when rest_framework.authtoken "
           "is installed."),
    Option("BROKER_TRANSPORTS", True, boolean,
           "Use the app's fixed kombu transports for redis:// (workers survive a Redis restart; one Redis "
           "client per connection pool, not one per command) and "
           "filesystem:// (atomic publish) broker URLs, unless CELERY_BROKER_TRANSPORT is set."),
    Option("IDLE_IN_TRANSACTION_TIMEOUT", None, non_negative_number_or_none,
           "PostgreSQL, in worker processes: seconds after which the server ends a session left idle "
           "inside a transaction (a frozen worker), so a resumed run can take its rows. Default: the "
           "heartbeat lease; 0 leaves the server's setting alone."),
]

#: The app's settings: ``from operations.conf import conf; conf.HEARTBEAT_LEASE``.
conf = AppSettings(PREFIX, OPTIONS)


def heartbeat_interval() -> float:
    """Seconds between two heartbeats of a running step (a quarter of the lease, at least 0.5 s)."""
    return max(0.5, conf.HEARTBEAT_LEASE / 4)
