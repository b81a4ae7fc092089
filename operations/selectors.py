"""Reads: which operations a user may see, an operation's remaining workflow, its data rows."""

from .catalogue import UnknownKind, get_kind
from .models import Operation, OperationEvent
from .states import ACTIVE, legal_verbs


def operation_list(*, user=None, status=None, kind=None):
    """Newest first; a non-staff user sees only their own operations."""
    queryset = Operation.objects.select_related("owner").order_by("-created_at", "-id")
    if user is not None and not user.is_staff:
        queryset = queryset.filter(owner=user)
    if status:
        queryset = queryset.filter(status=status)
    if kind:
        queryset = queryset.filter(kind=kind)
    return queryset


def operation_get(*, operation_id, user=None):
    """The operation, if ``user`` may see it; Operation.DoesNotExist otherwise (a 404, not a 403)."""
    return operation_list(user=user).get(pk=operation_id)


def operation_events(*, operation):
    return OperationEvent.objects.filter(operation=operation).order_by("at", "id")


def remaining_workflow(operation):
    """What is left to run: the steps from the head on, the carried value and the in-step cursor."""
    steps = operation.steps
    return {
        "next_step": operation.step_index,
        "steps_total": len(steps),
        "pause_every": (operation.workflow or {}).get("pause_every", 1),
        "carry": operation.carry,
        "checkpoint": operation.checkpoint,
        "steps": steps[operation.step_index:],
    }


def operation_is_active(operation):
    return operation.status in ACTIVE


def operation_actions(operation):
    """The user verbs that apply now (the buttons to show)."""
    return legal_verbs(operation.status)


def operation_row_count(operation):
    """Rows of data the operation has stored right now, or None for kinds that store none."""
    try:
        kind = get_kind(operation.kind)
    except UnknownKind:
        return None
    return kind.count_rows(operation) if kind.count_rows else None


def operation_cancel_effect(operation):
    try:
        return get_kind(operation.kind).cancel_effect
    except UnknownKind:
        return "Unknown kind: nothing will be compensated."
