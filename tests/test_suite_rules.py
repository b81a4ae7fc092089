"""The suite's own rules (tests/conftest.py): every test runs in some session of make test."""

import pytest

from tests import conftest


class Item:
    """What the rule reads of a collected test: its id and its closest markers."""

    def __init__(self, nodeid, *marks):
        self.nodeid = nodeid
        self.marks = {mark.name: mark for mark in marks}

    def get_closest_marker(self, name):
        return self.marks.get(name)


PG_ONLY = pytest.mark.backends("pg-redis", "pg-rabbitmq").mark
INTEGRATION = pytest.mark.integration.mark
MINUTES = pytest.mark.minutes.mark


def test_a_test_that_no_session_takes_is_named():
    items = [
        Item("x::pg_only", PG_ONLY),
        Item("x::pg_integration", PG_ONLY, INTEGRATION),
        Item("x::with_sqlite", pytest.mark.backends("sqlite-fs", "pg-redis").mark),
        Item("x::everywhere"),
        Item("x::minutes_not_integration", MINUTES),
        Item("x::minutes_on_rabbitmq_only", MINUTES, INTEGRATION, pytest.mark.backends("pg-rabbitmq").mark),
        Item("x::minutes", MINUTES, INTEGRATION),
    ]
    assert conftest._running_nowhere(items) == ["x::pg_only", "x::minutes_not_integration",
                                                "x::minutes_on_rabbitmq_only"]
