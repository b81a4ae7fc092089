"""After a fault: was anything lost, doubled, or reached by an illegal transition?

``check_operation`` returns a list of problems (empty when the operation's history and data are
exactly what the design promises); the fault tests assert it is empty and docs/reliability.md
counts the runs.
"""

import hashlib

from django.db.models import Count

from operations.contrib.demo.models import Record
from operations.models import Operation
from operations.states import TERMINAL, Status, is_legal


def history_problems(operation):
    """Every status change follows the state table, continues from the previous one, and ends
    where the row is; nothing changes after a terminal status."""
    problems, current = [], ""
    for event in operation.events.order_by("at", "id"):
        if event.from_status == event.to_status and current:
            continue  # a note: a retried step, a refused resume
        if event.from_status != current:
            problems.append(f"event {event.pk}: {event.from_status or '∅'} → {event.to_status}, "
                            f"but the status was {current or '∅'}")
        if not is_legal(event.from_status, event.to_status):
            problems.append(f"event {event.pk}: illegal transition {event.from_status or '∅'} → {event.to_status}")
        if current in TERMINAL:
            problems.append(f"event {event.pk}: a change after the terminal status {current}")
        current = event.to_status
    if current != operation.status:
        problems.append(f"the history ends at {current}, the row says {operation.status}")
    return problems


def rows_checksum(rows):
    digest = hashlib.sha256()
    for row in sorted(rows):
        digest.update(repr(row).encode())
    return digest.hexdigest()


def record_checksum(operation_id):
    rows = Record.objects.filter(operation_id=operation_id).values_list("external_id", "name", "email", "amount", "date")
    return rows_checksum((i, n, e, f"{float(a):.2f}", str(d)) for i, n, e, a, d in rows)


def data_problems(operation, *, rows=None, checksum=None, result=None):
    """Completed: exactly ``rows`` rows, no id twice, the input's checksum and result.
    Cancelled: no row left."""
    problems = []
    stored = Record.objects.filter(operation_id=operation.pk)
    count = stored.count()
    doubled = stored.values("external_id").annotate(n=Count("*")).filter(n__gt=1).count()
    if doubled:
        problems.append(f"{doubled} id(s) stored twice")
    if operation.status == Status.CANCELLED and count:
        problems.append(f"cancelled, but {count} row(s) remain")
    if operation.status == Status.COMPLETED:
        if rows is not None and count != rows:
            problems.append(f"completed with {count} row(s), expected {rows}")
        if checksum is not None and record_checksum(operation.pk) != checksum:
            problems.append("the stored rows do not match the input's checksum")
        if result is not None and operation.result != result:
            problems.append(f"result {operation.result!r}, expected {result!r}")
    return problems


def check_operation(operation_id, **expected):
    operation = Operation.objects.get(pk=operation_id)
    return history_problems(operation) + data_problems(operation, **expected)
