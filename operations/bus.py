"""The SQL that writes ``Operation`` rows: one conditional UPDATE per write, row count checked.

Never read, check, save: each UPDATE names the statuses (and the run token / fence) it expects in
its WHERE clause, and RETURNING tells the caller whether it won and from which status. Used only
by ``operations.services``; portable across PostgreSQL and SQLite (3.35+, for RETURNING).
"""

import json

from django.db import connection

from .models import Operation

#: Joined into an UPDATE on PostgreSQL, sets how the enclosing transaction commits: "off" does
#: not wait for the WAL flush, "on" (the default) does. The last setting in a transaction wins.
COMMIT_MODE = " FROM (SELECT set_config('synchronous_commit', %s, true)) AS commit_mode"


class Raw(str):
    """A SQL expression for a SET clause, e.g. ``Raw("run_token + 1")``, with its parameters."""

    def __new__(cls, sql, params=()):
        raw = super().__new__(cls, sql)
        raw.params = list(params)
        return raw


def _q(name):
    return connection.ops.quote_name(name)


def column(name):
    """A quoted column name, for SQL expressions such as ``Raw(f"{column('fence')} + 1")``."""
    return _q(name)


def _table():
    return _q(Operation._meta.db_table)


def _assignment(name, value):
    if isinstance(value, Raw):
        return f"{_q(name)} = {value}", value.params
    field = Operation._meta.get_field(name)
    return f"{_q(name)} = %s", [field.get_db_prep_save(value, connection)]


def in_statuses(statuses):
    statuses = sorted(statuses)
    return f"{_q('status')} IN ({', '.join(['%s'] * len(statuses))})", statuses


def update(operation_id, assignments, conditions=(), returning=("previous_status",), many=False,
           durable=None):
    """``UPDATE … SET assignments WHERE id = … AND conditions RETURNING returning``.

    ``conditions`` is a list of (sql, params). Returns the RETURNING row, or None when no row
    matched (the caller's expectation was stale). ``operation_id=None`` with ``many=True``
    updates every matching row and returns all of them.

    ``durable`` (PostgreSQL): False lets the transaction this UPDATE belongs to commit without
    waiting for the WAL flush; True makes it wait again; None leaves it as it is. A server crash
    may then lose the last fraction of a second of such commits — each one whole, never half —
    which the engine can afford for heartbeats and step advances: a lost advance loses its
    step's writes with it, and the step simply runs again.
    """
    sets, params = [], []
    for name, value in assignments.items():
        sql, values = _assignment(name, value)
        sets.append(sql)
        params += values
    where, where_params = [], []
    if operation_id is not None:
        where.append(f"{_q('id')} = %s")
        where_params.append(operation_id)
    for sql, values in conditions:
        where.append(sql)
        where_params += list(values)
    mode = []
    if durable is not None and connection.vendor == "postgresql":
        mode = ["on" if durable else "off"]
    sql = (
        f"UPDATE {_table()} SET {', '.join(sets)}{COMMIT_MODE if mode else ''}"
        f" WHERE {' AND '.join(where) or '1 = 1'} RETURNING {', '.join(_q(c) for c in returning)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params + mode + where_params)
        rows = cursor.fetchall()
    if many:
        return rows
    return rows[0] if rows else None


def load_json(value):
    """JSON columns come back from raw SQL as text on both backends."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode()
    return json.loads(value) if isinstance(value, str) else value
