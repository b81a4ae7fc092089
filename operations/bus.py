"""The SQL that writes ``Operation`` rows: one conditional UPDATE per write, row count checked
(and the claim's read).

Never read, check, save: each UPDATE names the statuses (and the run token / fence) it expects in
its WHERE clause, and RETURNING tells the caller whether it won and from which status. Used only
by ``operations.services``; portable across PostgreSQL and SQLite (3.35+, for RETURNING).
"""

import functools
import json

from django.db import DEFAULT_DB_ALIAS, connection, connections

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


@functools.cache
def _q(name):
    """Quoted once per name: PostgreSQL and SQLite quote alike, and a step's two statements
    would otherwise spend more time quoting than the server spends running them."""
    return connection.ops.quote_name(name)


@functools.cache
def _field(name):
    return Operation._meta.get_field(name)


def column(name):
    """A quoted column name, for SQL expressions such as ``Raw(f"{column('fence')} + 1")``."""
    return _q(name)


def _table():
    return _q(Operation._meta.db_table)


def _assignment(name, value):
    if isinstance(value, Raw):
        return f"{_q(name)} = {value}"
    return f"{_q(name)} = %s"


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
    sql, params = _update_sql(operation_id, assignments, conditions, returning, durable)
    rows = _fetch(sql, params)
    if many:
        return rows
    return rows[0] if rows else None


def advance(operation_id, assignments, conditions, *, durable):
    """A step advance (``update`` returning the status) that also keeps the value it carries into
    the next step as that step's ``StepBoundary``, what a fork from there starts with. On
    PostgreSQL in the same statement (a data-modifying WITH: no extra round trip); elsewhere in
    a second statement of the same transaction. Returns the status, or None (stale)."""
    from .models import StepBoundary

    boundary = _q(StepBoundary._meta.db_table)
    sql, params = _update_sql(operation_id, assignments, conditions,
                              ("status", "id", "step_index", "carry"), durable)
    if connection.vendor == "postgresql":
        rows = _fetch(_keeping_boundary(sql, boundary), params)
        return rows[0][0] if rows else None
    from django.db import transaction

    with transaction.atomic():
        rows = _fetch(sql, params)
        if not rows:
            return None
        status, _, index, carry = rows[0]
        _fetch(f"INSERT INTO {boundary} (operation_id, step_index, carry) VALUES (%s, %s, %s) "
               f"ON CONFLICT (operation_id, step_index) DO UPDATE SET carry = excluded.carry RETURNING 1",
               [operation_id, index, carry])
        return status


def select(operation_id, columns, conditions=(), column_params=()):
    """``SELECT columns FROM … WHERE id = … AND conditions``, or None: the one read on the hot
    path (a step's claim), with its SQL cached by shape as the UPDATEs' is. A column may be an
    SQL expression, whose parameters are ``column_params``."""
    shape = ("select", connection.vendor, tuple(columns), tuple(sql for sql, _ in conditions))
    sql = _SQL_OF_SHAPE.get(shape)
    if sql is None:
        where = " AND ".join([f"{_q('id')} = %s", *(sql for sql, _ in conditions)])
        sql = f"SELECT {', '.join(_q(c) if c.isidentifier() else c for c in columns)} FROM {_table()} WHERE {where}"
        if len(_SQL_OF_SHAPE) >= _SHAPES_MAX:
            _SQL_OF_SHAPE.clear()
        _SQL_OF_SHAPE[shape] = sql
    params = [*column_params, operation_id]
    for _, values in conditions:
        params += values
    rows = _fetch(sql, params)
    return rows[0] if rows else None


def db_datetime(value):
    """A datetime as a parameter of raw SQL: aware on PostgreSQL, naive UTC text on SQLite."""
    return connection.ops.adapt_datetimefield_value(value)


def can_overlap():
    """Whether an advance can be sent without waiting for it (PostgreSQL, outside a transaction:
    one statement that commits by itself)."""
    return connection.vendor == "postgresql" and not connection.in_atomic_block


def advance_overlapped(operation_id, assignments, conditions, *, durable, during):
    """``advance``, sent to the server without waiting for it; ``during()`` runs while the server
    runs it (the publish of the next step's message), then its result is read. Returns the
    status, or None (stale). Only where ``can_overlap()``.

    Bypasses Django's cursor (its driver's connection, in Django's error classes): a cursor
    cannot leave a statement in flight. The text is what Django's client-side binding sends."""
    from psycopg import ClientCursor, errors, pq
    from psycopg.generators import fetch_many, send

    from .models import StepBoundary

    sql, params = _update_sql(operation_id, assignments, conditions, ("status", "id", "step_index", "carry"), durable)
    sql = _keeping_boundary(sql, _q(StepBoundary._meta.db_table))
    connection.ensure_connection()
    connection.validate_no_broken_transaction()
    driver = connection.connection
    with connection.wrap_database_errors:
        query = ClientCursor(driver).mogrify(sql, params)
        driver.pgconn.send_query(query.encode(driver.info.encoding))
        driver.wait(send(driver.pgconn))
    try:
        during()
    finally:  # the result is read whatever happened meanwhile: the connection stays usable
        with connection.wrap_database_errors:
            results = driver.wait(fetch_many(driver.pgconn))
            for result in results:
                if result.status == pq.ExecStatus.FATAL_ERROR:
                    raise errors.error_from_result(result, encoding=driver.info.encoding)
    rows = results[0] if results else None
    if rows is None or rows.ntuples == 0:
        return None
    return rows.get_value(0, 0).decode()


#: Statement shape → its SQL: the text depends only on which columns are set how, the conditions'
#: SQL and what is returned, never on the values (bounded: shapes are few, see _SHAPES_MAX).
_SQL_OF_SHAPE = {}
_SHAPES_MAX = 1024


@functools.lru_cache(maxsize=64)
def _keeping_boundary(update_sql, boundary):
    return (f"WITH advanced AS ({update_sql}), kept AS (INSERT INTO {boundary} (operation_id, step_index, carry) "
            f"SELECT id, step_index, carry FROM advanced ON CONFLICT (operation_id, step_index) "
            f"DO UPDATE SET carry = EXCLUDED.carry) SELECT status FROM advanced")


def _update_sql(operation_id, assignments, conditions, returning, durable):
    wrapper = connections[DEFAULT_DB_ALIAS]
    mode = ["on" if durable else "off"] if durable is not None and wrapper.vendor == "postgresql" else []
    shape = (wrapper.vendor, tuple((name, value if isinstance(value, Raw) else None) for name, value in assignments.items()),
             tuple(sql for sql, _ in conditions), operation_id is not None, tuple(returning), bool(mode))
    sql = _SQL_OF_SHAPE.get(shape)
    if sql is None:
        where = ([f"{_q('id')} = %s"] if operation_id is not None else []) + [sql for sql, _ in conditions]
        sql = (
            f"UPDATE {_table()} SET {', '.join(_assignment(name, value) for name, value in assignments.items())}"
            f"{COMMIT_MODE if mode else ''}"
            f" WHERE {' AND '.join(where) or '1 = 1'} RETURNING {', '.join(_q(c) for c in returning)}"
        )
        if len(_SQL_OF_SHAPE) >= _SHAPES_MAX:
            _SQL_OF_SHAPE.clear()
        _SQL_OF_SHAPE[shape] = sql
    params = []
    for name, value in assignments.items():
        if isinstance(value, Raw):
            params += value.params
        else:
            params.append(_field(name).get_db_prep_save(value, wrapper))
    params += mode
    if operation_id is not None:
        params.append(operation_id)
    for _, values in conditions:
        params += values
    return sql, params


def _fetch(sql, params):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def load_json(value):
    """JSON columns come back from raw SQL as text on both backends."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode()
    return json.loads(value) if isinstance(value, str) else value
