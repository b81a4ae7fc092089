"""``reviewed_import``: import a CSV, wait until a person approves what was loaded, then publish it.

The import is ``csv_import``'s step; then the operation waits (*Waiting*, no worker held) for an
Approve in the admin or on its page, or for the ``approval`` signal from another system; Reject
ends it and removes the imported rows (the same compensation as the import's). Publishing marks
the import as reviewed in the result, with who approved it and what they said (the payload).
"""

import dataclasses

from celery import chain
from django import forms
from django.utils import timezone

from operations.catalogue import get_kind, register_kind
from operations.waiting import wait_for_approval
from operations.workflow import step

from ..models import Record
from .csv_import import import_csv
from .csv_source import CsvSourceForm


@step(name="operations.publish_import", context=True, atomic=False)
def publish_import(ctx, approval):
    """The result people read: the rows that were imported and reviewed, and the approval."""
    rows = Record.objects.filter(operation_id=ctx.operation_id).count()
    # Approved without a payload, what was carried on is the import's own result: no approval note.
    imported = isinstance(approval, dict) and set(approval) == {"rows", "file"}
    return {"rows": rows, "published_at": timezone.now().isoformat(), "approval": None if imported else approval}


class ReviewedImportForm(CsvSourceForm):
    review_hours = forms.FloatField(required=False, min_value=0.01, max_value=24 * 30,
                                    help_text="Hours a reviewer has to approve; then the import is cancelled "
                                              "(its rows removed). Empty: no limit.")


def build(params):
    hours = params.get("review_hours")
    return chain(
        import_csv.si(params["path"], params["source"], params["chunk_rows"], params["rows_per_second"]),
        wait_for_approval(timeout=hours * 3600 if hours else None, on_timeout="cancel"),
        publish_import.s(),
    )


# The import's kind (compensation, counts, uploads, editable pace), with its own form and plan.
register_kind(dataclasses.replace(
    get_kind("csv_import"),
    name="reviewed_import",
    label="Import a CSV file, then have it approved",
    description="Loads a CSV of records, waits for a person to approve the rows, then publishes them.",
    form=ReviewedImportForm,
    build=build,
    max_concurrent=None,  # one waiting for a reviewer must not hold up the user's other imports
))
