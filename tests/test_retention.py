"""Retention (issue 15): beat deletes finished operations older than their kind's or the global
days, in batches, with their events, step data and stored rows; ``operations purge`` by hand."""

import dataclasses
import io
from datetime import timedelta
from unittest import mock

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from operations import catalogue, services
from operations.catalogue import get_kind
from operations.contrib.demo.models import Record
from operations.models import Operation, OperationEvent, StepBoundary

pytestmark = pytest.mark.django_db


def finished(status, days_ago, kind="arithmetic", rows=0):
    """An operation of ``kind`` that ended ``days_ago`` days ago in ``status``, with ``rows`` records."""
    with mock.patch.object(services, "dispatch_on_commit"):
        operation = services.operation_start(kind="arithmetic", params={"steps": 2}, actor="cli")
    ended = timezone.now() - timedelta(days=days_ago)
    Operation.objects.filter(pk=operation.pk).update(kind=kind, status=status, finished_at=ended)
    StepBoundary.objects.create(operation_id=operation.pk, step_index=1, carry=1)
    Record.objects.bulk_create([Record(operation_id=operation.pk, external_id=i, name="n", email="e", amount="1",
                                       date="2026-01-01") for i in range(rows)])
    return operation.pk


def alive(*ids):
    return set(Operation.objects.filter(pk__in=ids).values_list("pk", flat=True))


@override_settings(TAP_RETENTION={"completed": 30, "cancelled": 90, "failed": 90})
def test_retention_deletes_what_is_due_by_status_and_kind_in_batches_with_its_rows():
    old_done = [finished("completed", 31, rows=5) for _ in range(5)]
    young_done = finished("completed", 29)
    old_cancelled, young_cancelled = finished("cancelled", 91), finished("cancelled", 60)
    old_failed = finished("failed", 100)
    with mock.patch.object(services, "dispatch_on_commit"):
        running = services.operation_start(kind="arithmetic", params={"steps": 2}, actor="cli").pk
    Operation.objects.filter(pk=running).update(finished_at=timezone.now() - timedelta(days=400))
    # a kind of its own: csv_import keeps completed ones 1 day, and failed ones forever
    own = dataclasses.replace(get_kind("csv_import"), retention={"completed": 1, "failed": None})
    with mock.patch.dict(catalogue.KINDS, {"csv_import": own}):
        own_old, own_failed = finished("completed", 2, kind="csv_import", rows=3), finished("failed", 400, kind="csv_import")
        own_young = finished("completed", 0.5, kind="csv_import")
        everyone = [*old_done, young_done, old_cancelled, young_cancelled, old_failed, running, own_old, own_failed,
                    own_young]
        dry = services.operations_purge(older_than=timedelta(0), dry_run=True, actor="cli")
        assert dry.dry_run and dry.total == 12 and alive(*everyone) == set(everyone)

        outcome = services.operations_retain(batch=2)
        assert services.operations_retain().total == 0  # nothing left that is due
    assert outcome.operations == {"completed": 6, "cancelled": 1, "failed": 1}
    assert outcome.events == 8  # one "started" event each
    kept = {young_done, young_cancelled, running, own_failed, own_young}
    assert alive(*everyone) == kept
    gone = set(everyone) - kept
    assert not Record.objects.filter(operation_id__in=gone).exists()
    assert not StepBoundary.objects.filter(operation_id__in=gone).exists()
    assert not OperationEvent.objects.filter(operation_id__in=gone).exists()


@override_settings(TAP_RETENTION={"completed": 30, "failed": 90})
def test_each_batch_follows_on_from_the_last_one_past_operations_that_ended_at_the_same_instant():
    """A batch's ids start after the last batch's (finished_at, id): five operations that ended at
    the same instant, split across batches of two, are each deleted, and nothing that is not due."""
    instant = timezone.now() - timedelta(days=40)
    same = [finished("completed", 40) for _ in range(5)]
    Operation.objects.filter(pk__in=same).update(finished_at=instant)
    older, young = [finished("completed", 50 + i) for i in range(3)], finished("completed", 10)
    failed, young_failed, cancelled = finished("failed", 91), finished("failed", 89), finished("cancelled", 400)
    with CaptureQueriesContext(connection) as queries:
        outcome = services.operations_retain(batch=2)
    assert outcome.operations == {"completed": 8, "cancelled": 0, "failed": 1}
    assert alive(*same, *older, young, failed, young_failed, cancelled) == {young, young_failed, cancelled}
    pages = [query["sql"] for query in queries if " LIMIT " in query["sql"] and '"finished_at"' in query["sql"]]
    # completed: four full pages and the empty one after them; failed: one short page; cancelled
    # (kept forever): none
    assert len(pages) == 4 + 1 + 1


def test_purge_by_hand_counts_first_and_refuses_what_is_not_finished():
    old = [finished("completed", 10), finished("failed", 10), finished("cancelled", 3)]
    out = io.StringIO()
    call_command("operations", "purge", "--older-than", "5", "--dry-run", stdout=out)
    assert out.getvalue().strip() == "would delete 2 operation(s) (1 completed, 1 failed) with 2 event(s)"
    assert alive(*old) == set(old)
    out = io.StringIO()
    call_command("operations", "purge", "--older-than", "5", "--status", "failed", stdout=out)
    assert out.getvalue().strip() == "deleted 1 operation(s) (1 failed) with 1 event(s)"
    assert alive(*old) == {old[0], old[2]}
    with pytest.raises(services.InvalidParams, match="only finished operations are purged"):
        services.operations_purge(older_than=timedelta(days=1), statuses=["running"], actor="cli")
    with pytest.raises(CommandError, match="invalid choice"):
        call_command("operations", "purge", "--older-than", "1", "--status", "paused")


@override_settings(TAP_RETENTION={"completed": 0})
def test_a_bad_retention_setting_is_named():
    from django.core.exceptions import ImproperlyConfigured

    from operations.conf import conf

    with pytest.raises(ImproperlyConfigured, match="TAP_RETENTION"):
        conf.RETENTION
