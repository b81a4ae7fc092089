"""Deleting an operation removes its rows in bulk; the admin's confirmation counts, never lists."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

from operations import services
from operations.contrib.demo.csvio import chunks
from operations.contrib.demo.files import RECORD_HEADER, write_demo_csv
from operations.contrib.demo.kinds.csv_import import load_chunk
from operations.contrib.demo.models import Record, StagedRecord
from operations.models import Operation, OperationEvent

pytestmark = pytest.mark.django_db

ROWS = 20_000


def _operation_with_rows(tmp_path, rows=ROWS):
    """A completed csv_import with ``rows`` records (loaded in-process, as its step would)."""
    path = write_demo_csv(tmp_path / "rows.csv", rows=rows)
    operation = services.operation_start(kind="arithmetic", params={"steps": 1}, actor="cli")
    Operation.objects.filter(pk=operation.pk).update(kind="csv_import", status="completed")
    for chunk, _ in chunks(None, path, RECORD_HEADER, "rows.csv", 5000):
        load_chunk(operation.pk, chunk, "rows.csv")
    StagedRecord.objects.bulk_create([StagedRecord(operation_id=operation.pk, external_id=1, name="s", email="e",
                                                   amount="1", date="2026-01-01")])
    return Operation.objects.get(pk=operation.pk)


def test_the_admins_delete_confirmation_counts_the_rows_and_the_delete_removes_them(tmp_path):
    operation = _operation_with_rows(tmp_path)
    other = _operation_with_rows(tmp_path / "other", rows=10)
    boss = User.objects.create_superuser("boss", password="pw-boss-12345")
    client = Client()
    client.force_login(boss)
    url = f"/admin/operations/operation/{operation.pk}/delete/"
    page = client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "20,000 row(s) of data it stored" in html and "history event(s)" in html
    assert len(page.content) < 30_000  # counts, not 20,000 lines
    assert client.post(url, {"post": "yes"}).status_code == 302
    assert not Operation.objects.filter(pk=operation.pk).exists()
    assert not Record.objects.filter(operation_id=operation.pk).exists()
    assert not StagedRecord.objects.filter(operation_id=operation.pk).exists()
    assert not OperationEvent.objects.filter(operation_id=operation.pk).exists()
    assert Record.objects.filter(operation_id=other.pk).count() == 10  # only its own rows


def test_deleting_from_the_changelist_selection_does_the_same(tmp_path):
    first, second = _operation_with_rows(tmp_path / "a", rows=300), _operation_with_rows(tmp_path / "b", rows=200)
    boss = User.objects.create_superuser("boss", password="pw-boss-12345")
    client = Client()
    client.force_login(boss)
    data = {"action": "delete_selected", "_selected_action": [first.pk, second.pk]}
    confirm = client.post("/admin/operations/operation/", data).content.decode()
    assert "300 row(s) of data it stored" in confirm and "200 row(s) of data it stored" in confirm
    client.post("/admin/operations/operation/", {**data, "post": "yes"})
    assert not Record.objects.filter(operation_id__in=[first.pk, second.pk]).exists()
    assert not Operation.objects.filter(pk__in=[first.pk, second.pk]).exists()
