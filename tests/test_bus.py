"""operations.bus: a step's statements straight on psycopg's connection (PostgreSQL in autocommit),
every other statement through Django's cursor, with the same rows and errors either way."""

import json
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import DataError, connection, transaction
from django.test.utils import CaptureQueriesContext
from psycopg.types.json import Jsonb

from operations import bus, engine, services
from operations.models import Operation
from operations.states import Status


def test_placeholders_are_numbered_and_a_doubled_percent_is_a_percent():
    assert bus._numbered("SELECT %s, '100%%' WHERE a = %s") == b"SELECT $1, '100%' WHERE a = $2"


def test_parameters_go_in_text_format_and_any_other_type_is_left_to_django():
    moment = datetime(2026, 12, 7, 22, 0, 0, 123, tzinfo=UTC)
    assert bus._text_params([None, True, 7, 2 ** 62, Status.RUNNING, "é", moment, Jsonb({"a": [1, "é"]}, dumps=json.dumps)]) == [
        None, b"t", b"7", str(2 ** 62).encode(), b"running", "é".encode(), b"2026-12-07T22:00:00.000123+00:00",
        json.dumps({"a": [1, "é"]}).encode()]
    assert bus._text_params([1, Decimal("1.5")]) is None
    assert bus._text_params([Jsonb(1)]) is None  # psycopg's own dumps, not the field's encoder


@pytest.fixture
def direct_calls(monkeypatch):
    """How many statements took the direct path."""
    calls = []
    real = bus._fetch_direct

    def counted(sql, values, during):
        calls.append(sql)
        return real(sql, values, during)

    monkeypatch.setattr(bus, "_fetch_direct", counted)
    return calls


@pytest.mark.integration  # the direct path is PostgreSQL's; no worker
@pytest.mark.backends("pg-redis", "pg-rabbitmq")
@pytest.mark.django_db(transaction=True)
def test_a_claim_and_an_advance_read_and_write_the_same_on_either_path(direct_calls, monkeypatch):
    monkeypatch.setattr(services.current_app, "send_task", lambda *args, **kwargs: None)
    engine._PLANS.clear()
    operation = services.operation_start(kind="arithmetic", params={"steps": 3}, actor="cli")
    claim = services.step_claim(operation.pk, operation.run_token)
    assert len(direct_calls) == 2  # the run's first claim: its read, and the record that a worker took it
    with CaptureQueriesContext(connection) as logged:  # queries logged: Django's cursor runs them
        assert services.step_claim(operation.pk, operation.run_token) == claim
    assert len(logged) == 1 and len(direct_calls) == 2

    carry = {"text": "é ' %s", "list": [1, None, 2.5]}
    assert services.step_advance(operation.pk, operation.run_token, claim.fence, 0, carry, count_step=True) \
        == Status.RUNNING
    assert len(direct_calls) == 3
    with transaction.atomic():  # in a step's transaction: Django's cursor
        services.step_advance(operation.pk, operation.run_token, claim.fence + 1, 1, [carry], count_step=True)
    assert len(direct_calls) == 3
    row = Operation.objects.get(pk=operation.pk)
    assert (row.step_index, row.fence, row.carry, row.progress_done) == (2, claim.fence + 2, [carry], 2)
    assert services.step_claim(operation.pk, operation.run_token).carry == [carry]
    with pytest.raises(services.Fenced):  # a stale fence: no row, on the direct path too
        services.step_advance(operation.pk, operation.run_token, claim.fence, 2, None, count_step=True)
    assert len(direct_calls) == 5


@pytest.mark.integration
@pytest.mark.backends("pg-redis", "pg-rabbitmq")
@pytest.mark.django_db(transaction=True)
def test_the_direct_path_overlaps_what_runs_during_it_and_keeps_django_s_errors(direct_calls):
    began = time.monotonic()
    seen = []
    assert bus._fetch("SELECT pg_sleep(0.3), %s::int + 1", [1], during=lambda: seen.append(time.monotonic())) \
        == [("", 2)]
    assert seen[0] - began < 0.25 <= time.monotonic() - began  # while the server slept
    with pytest.raises(DataError):  # Django's error class; the connection stays usable
        bus._fetch("SELECT 1 / %s", [0], during=lambda: seen.append("during"))
    assert seen[-1] == "during" and bus._fetch("SELECT %s", ["still here"]) == [("still here",)]
    assert len(direct_calls) == 3

    with transaction.atomic():  # no overlap inside a transaction: the statement, then during()
        began, seen = time.monotonic(), []
        bus._fetch("SELECT pg_sleep(0.3)", [], during=lambda: seen.append(time.monotonic()))
        assert seen[0] - began >= 0.3
        assert not bus.can_overlap()
    assert len(direct_calls) == 3 and bus.can_overlap()


@pytest.mark.integration
@pytest.mark.backends("pg-redis", "pg-rabbitmq")
@pytest.mark.django_db(transaction=True)
def test_a_connection_speaking_another_encoding_goes_through_django_s_cursor(direct_calls):
    with connection.cursor() as cursor:
        cursor.execute("SET client_encoding TO 'LATIN1'")
    try:
        assert not bus.can_overlap()
        # é is one byte in LATIN1: sent as UTF-8 (two bytes) it would come back as Ã©
        assert bus._fetch("SELECT %s, length(%s)", ["é", "é"]) == [("é", 1)]
        assert direct_calls == []
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET client_encoding TO 'UTF8'")
    assert bus.can_overlap() and bus._fetch("SELECT %s, length(%s)", ["é", "é"]) == [("é", 1)]
    assert len(direct_calls) == 1
