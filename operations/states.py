"""The operation state machine as data: statuses, and which transition leads from where to where.

Services execute these transitions (one conditional UPDATE each); pages and the API use the same
table to decide which buttons are legal; the fault suite checks event histories against it.
"""

from dataclasses import dataclass

from django.db import models


class Status(models.TextChoices):
    RUNNING = "running", "Running"
    PAUSE_REQUESTED = "pause_requested", "Pause requested"
    PAUSED = "paused", "Paused"
    CANCEL_REQUESTED = "cancel_requested", "Cancel requested"
    CANCELLED = "cancelled", "Cancelled"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    INTERRUPTED = "interrupted", "Interrupted"
    WAITING = "waiting", "Waiting"


#: A worker is (or should be) executing steps of operations in these statuses.
ACTIVE = frozenset({Status.RUNNING, Status.PAUSE_REQUESTED, Status.CANCEL_REQUESTED})
#: Nothing leaves these.
TERMINAL = frozenset({Status.COMPLETED, Status.CANCELLED})
#: Not ended: a worker runs it, or may run it again without a person (or once a person says so).
UNFINISHED = ACTIVE | {Status.PAUSED, Status.INTERRUPTED, Status.WAITING}
#: Entering one of these gives back the operation's concurrency slot.
RELEASES_SLOT = frozenset({Status.COMPLETED, Status.CANCELLED, Status.FAILED, Status.INTERRUPTED})


@dataclass(frozen=True)
class Transition:
    name: str
    sources: frozenset
    target: str
    #: The user-facing verb this transition serves (pause, resume, cancel, retry, terminate), if any.
    verb: str = ""


TRANSITIONS = {
    t.name: t
    for t in (
        Transition("pause", frozenset({Status.RUNNING}), Status.PAUSE_REQUESTED, "pause"),
        Transition("obey_pause", frozenset({Status.PAUSE_REQUESTED}), Status.PAUSED),
        Transition("resume", frozenset({Status.PAUSED, Status.INTERRUPTED}), Status.RUNNING, "resume"),
        Transition("withdraw_pause", frozenset({Status.PAUSE_REQUESTED}), Status.RUNNING, "resume"),
        Transition("request_cancel", frozenset({Status.RUNNING, Status.PAUSE_REQUESTED}),
                   Status.CANCEL_REQUESTED, "cancel"),
        Transition("obey_cancel", frozenset({Status.CANCEL_REQUESTED}), Status.CANCELLED),
        Transition("cancel_now", frozenset({Status.PAUSED, Status.FAILED, Status.INTERRUPTED, Status.WAITING}),
                   Status.CANCELLED, "cancel"),
        # a person: the step's worker process is stopped, its writes roll back, compensation runs
        Transition("terminate", ACTIVE, Status.CANCELLED, "terminate"),
        Transition("complete", frozenset({Status.RUNNING}), Status.COMPLETED),
        Transition("fail", frozenset({Status.RUNNING, Status.PAUSE_REQUESTED}), Status.FAILED),
        Transition("retry", frozenset({Status.FAILED}), Status.RUNNING, "retry"),
        Transition("interrupt", ACTIVE, Status.INTERRUPTED),
        # beat: the head step lost as many workers as the kind's poison limit allows
        Transition("poison", frozenset({Status.INTERRUPTED}), Status.FAILED),
        # a wait step (operations.wait_for_signal): no worker is held while it waits
        Transition("wait", frozenset({Status.RUNNING}), Status.WAITING),
        Transition("approve", frozenset({Status.WAITING}), Status.RUNNING, "approve"),
        Transition("signal", frozenset({Status.WAITING}), Status.RUNNING, "signal"),
        Transition("reject", frozenset({Status.WAITING}), Status.CANCELLED, "reject"),
        Transition("pause_wait", frozenset({Status.WAITING}), Status.PAUSED, "pause"),
        # beat, when a wait's timeout passes: go on, or fail, as the wait step says (or cancel_now)
        Transition("wait_timeout", frozenset({Status.WAITING}), Status.RUNNING),
        Transition("wait_expired", frozenset({Status.WAITING}), Status.FAILED),
        # beat, when an operation's deadline or its step's time limit passed: as the kind says
        Transition("deadline_fail", UNFINISHED, Status.FAILED),
        Transition("deadline_cancel", UNFINISHED, Status.CANCELLED),
    )
}

#: The verbs with a button (or an admin action) of their own, in the order the buttons show.
VERBS = ("approve", "reject", "pause", "resume", "cancel", "retry", "terminate")
VERB_PAST = {"pause": "paused", "resume": "resumed", "cancel": "cancelled", "retry": "retried",
             "terminate": "terminated", "fork": "forked", "edit": "edited", "approve": "approved",
             "reject": "rejected", "signal": "signalled"}
#: Verbs that start a new, linked operation instead of moving this one: legal in any status, from
#: the steps ``selectors.fork_steps`` lists.
NEW_OPERATION_VERBS = ("fork",)


def transitions_for_verb(verb):
    return [t for t in TRANSITIONS.values() if t.verb == verb]


def verb_sources(verb):
    """Every status from which a user may apply ``verb``."""
    sources = set()
    for t in transitions_for_verb(verb):
        sources |= t.sources
    return sources


def legal_verbs(status):
    """The user verbs that apply to an operation in ``status`` (which buttons to show)."""
    return [verb for verb in VERBS if status in verb_sources(verb)]


def is_legal(from_status, to_status):
    """Whether some transition (or the start, from nothing) leads from ``from_status`` to ``to_status``."""
    if not from_status:
        return to_status == Status.RUNNING
    return any(from_status in t.sources and t.target == to_status for t in TRANSITIONS.values())


def label(status):
    return Status(status).label if status in Status.values else status


def refusal_message(operation_id, status, verb):
    """Why ``verb`` cannot apply: "operation 12 is completed; only running operations can be paused"."""
    allowed = sorted(verb_sources(verb), key=lambda s: Status.values.index(s))
    names = [label(s).lower() for s in allowed]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return (
        f"operation {operation_id} is {label(status).lower()}; "
        f"only {listed} operations can be {VERB_PAST[verb]}"
    )
