"""Every exception of the operations app, in one module.

The ones a caller handles derive from OperationError; their message is written for the person who
asked (it says what is wrong and what to do). Faces turn them into a 400 / 409, an admin warning
or a CLI error line.
"""

from __future__ import annotations


class OperationError(Exception):
    """An operation could not be started or changed; the message says why, for the user."""


class InvalidParams(OperationError):
    """Bad parameters; ``errors`` maps each field (``__all__`` for the whole) to its messages."""

    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors
        super().__init__("; ".join(
            (f"{name}: " if name != "__all__" else "") + " ".join(messages)
            for name, messages in errors.items()
        ))


class UnknownKind(LookupError):
    """No kind of that name is registered (the message lists the known ones)."""


class OperationNotFound(OperationError):
    """No operation has that id."""


class TransitionRefused(OperationError):
    """The verb does not apply to the operation's status now (HTTP 409)."""

    def __init__(self, message: str, *, operation_id: int | None = None, status: str | None = None):
        super().__init__(message)
        self.operation_id = operation_id
        self.status = status


class ConcurrencyLimitReached(OperationError):
    """The kind's ``max_concurrent`` slots are all held; the message names the holders."""


class IdempotencyConflict(OperationError):
    """A start's idempotency key already started an operation that asked for something else
    (HTTP 409); ``operation_id`` names it."""

    def __init__(self, message: str, *, operation_id: int | None = None):
        super().__init__(message)
        self.operation_id = operation_id


class QuotaExceeded(OperationError):
    """The owner's quota (unfinished operations, work per operation) would be exceeded; the
    message names the limit and who can raise it (HTTP 409)."""


class WorkflowError(ValueError):
    """A plan that cannot run: the message names the step and what is wrong with it."""


class DataError(ValueError):
    """What a step found wrong with its input (a bad row of a file, say): deterministic, so the step
    is not retried, the operation fails with this message first, and the worker logs one line, not
    a traceback. Retrying reads the same input again; the faces say so and offer Start again."""


def http_status_for(exc: Exception) -> int:
    """The HTTP status a face answers a service error with — the one mapping the API and the
    pages share: bad parameters or an unknown kind 400, no such operation 404, a verb the status
    does not allow or a full concurrency limit 409."""
    if isinstance(exc, (InvalidParams, UnknownKind)):
        return 400
    if isinstance(exc, OperationNotFound):
        return 404
    return 409


#: How an operation failed by a DataError says so (the faces explain Retry by it).
DATA_ERROR_NOTE = "not retried: the same input fails the same way"


class Fenced(Exception):
    """Internal: a worker's write found the row moved on (new run token, other fence, or not running)."""


class StopStep(Exception):
    """Internal: raised out of a checkpoint when a pause or cancel is pending; the engine obeys it."""

    def __init__(self, status: str):
        super().__init__(status)
        self.status = status


class MemberStopped(Exception):
    """Internal: raised by ``operations.checkpoint()`` in a group member whose operation no longer
    runs (a pause or cancel pending, or another run owns it). The engine puts the member back to
    pending, unfinished: no result, no retry, no failure. A member must let it propagate."""
