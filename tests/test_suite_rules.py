"""The suite's own rules (tests/conftest.py): a test limited to some backends still runs somewhere."""

import pytest

from tests import conftest


class Item:
    """What the rule reads of a collected test: its id and its closest markers."""

    def __init__(self, nodeid, *marks):
        self.nodeid = nodeid
        self.marks = {mark.name: mark for mark in marks}

    def get_closest_marker(self, name):
        return self.marks.get(name)


def test_a_test_limited_to_postgresql_runs_nowhere_unless_it_is_integration():
    pg_only = pytest.mark.backends("pg-redis", "pg-rabbitmq").mark
    items = [
        Item("tests/x.py::pg_only", pg_only),
        Item("tests/x.py::pg_integration", pg_only, pytest.mark.integration.mark),
        Item("tests/x.py::with_sqlite", pytest.mark.backends("sqlite-fs", "pg-redis").mark),
        Item("tests/x.py::everywhere"),
    ]
    assert conftest._running_nowhere(items) == ["tests/x.py::pg_only"]
