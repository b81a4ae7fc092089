"""``bulk_insert``: insert N random rows, all or none.

Rows are staged chunk by chunk (each chunk commits with its checkpoint, so the insert can be
paused and resumed), then published into the records table in one transaction by the last step.
Until then no record of it is visible; a cancel or a failure leaves none.
"""

import random
from decimal import Decimal

from celery import chain
from django import forms
from django.db import connection

from operations.catalogue import AUTO_RECOVERY, Kind, register_kind
from operations.workflow import step

from ..conf import conf
from ..files import DAYS, FIRST, LAST
from ..models import Record, StagedRecord
from ..pacing import Pace
from ..rowstore import write_rows
from .chunking import ChunkedForm


def random_rows(operation_id, start, end):
    """Rows start+1..end; the same for the same (operation, chunk start), so a replay is identical."""
    rng = random.Random(f"{operation_id}:{start}")
    return [
        (operation_id, i, f"{rng.choice(FIRST)} {rng.choice(LAST)}", f"user{i}@example.org",
         str(Decimal(rng.randrange(10_000_000)) / 100), rng.choice(DAYS))
        for i in range(start + 1, end + 1)
    ]


@step(name="operations.bulk_stage", context=True, atomic=False)
def stage_rows(ctx, rows, chunk_rows, rows_per_second=None):
    position = (ctx.state or {}).get("next", 0)
    pace = Pace(rows_per_second)
    while position < rows:
        upper = min(rows, position + chunk_rows)
        with ctx.checkpoint({"next": upper}, done=upper, total=rows):
            write_rows(StagedRecord, StagedRecord.COLUMNS, random_rows(ctx.operation_id, position, upper))
        pace(upper - position)
        position = upper
    return rows


@step(name="operations.bulk_publish", context=True)
def publish_rows(ctx, staged):
    """Move the staged rows into the records table; commits together with the engine's advance."""
    q = connection.ops.quote_name
    columns = ", ".join(q(c) for c in Record.COLUMNS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {q(Record._meta.db_table)} ({columns}) SELECT {columns} "
            f"FROM {q(StagedRecord._meta.db_table)} WHERE {q('operation_id')} = %s", [ctx.operation_id])
        moved = cursor.rowcount
        cursor.execute(f"DELETE FROM {q(StagedRecord._meta.db_table)} WHERE {q('operation_id')} = %s",
                       [ctx.operation_id])
    if moved != staged:
        raise RuntimeError(f"expected {staged} staged rows, found {moved}")
    return {"rows": moved}


class BulkInsertForm(ChunkedForm):
    rows = forms.IntegerField(min_value=1, max_value=10_000_000, help_text="How many random rows to insert.")
    field_order = ["rows"]
    setting_defaults = {"chunk_rows": lambda: conf.BULK_CHUNK_ROWS}


def remove_rows(operation):
    staged, _ = StagedRecord.objects.filter(operation_id=operation.pk).delete()
    published, _ = Record.objects.filter(operation_id=operation.pk).delete()
    return f"removed {staged} staged and {published} published row(s)"


register_kind(Kind(
    name="bulk_insert",
    label="Insert N rows (all or none)",
    description="Inserts N random rows; none are visible until all of them are, and a cancel leaves none.",
    form=BulkInsertForm,
    build=lambda p: chain(stage_rows.si(p["rows"], p["chunk_rows"], p["rows_per_second"]), publish_rows.s()),
    compensate=remove_rows,
    cancel_effect="Discards every row staged so far; no record of this insert will remain.",
    count_rows=lambda operation: Record.objects.filter(operation_id=operation.pk).count(),
    progress="custom",
    # The bar counts rows staged; "rows stored" counts the published ones, 0 until the last step:
    # a full bar over 0 stored rows, paused before publishing, then says what it is.
    progress_unit="rows staged",
    recovery=AUTO_RECOVERY,  # the demo kinds come back by themselves after a crash
))
