"""The SQL that writes ``Operation`` rows: one conditional UPDATE per write, row count checked
(and the claim's read).

Never read, check, save: each UPDATE names the statuses (and the run token / fence) it expects in
its WHERE clause, and RETURNING tells the caller whether it won and from which status. Used only
by ``operations.services``; portable across PostgreSQL and SQLite (3.35+, for RETURNING).
"""

import datetime
import functools
import itertools
import json
import re

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


def advance(operation_id, assignments, conditions, *, durable, during=None):
    """A step advance (``update`` returning the status) that also keeps the value it carries into
    the next step as that step's ``StepBoundary``, what a fork from there starts with. On
    PostgreSQL in the same statement (a data-modifying WITH: no extra round trip); elsewhere in
    a second statement of the same transaction. Returns the status, or None (stale).

    ``during()`` runs while the server runs the advance where ``can_overlap()`` (the publish of
    the next step's message), else right after it."""
    from .models import StepBoundary

    boundary = _q(StepBoundary._meta.db_table)
    sql, params = _update_sql(operation_id, assignments, conditions,
                              ("status", "id", "step_index", "carry"), durable)
    if connection.vendor == "postgresql":
        rows = _fetch(_keeping_boundary(sql, boundary), params, during=during)
        return rows[0][0] if rows else None
    from django.db import transaction

    with transaction.atomic():
        rows = _fetch(sql, params)
        if rows:
            status, _, index, carry = rows[0]
            _fetch(f"INSERT INTO {boundary} (operation_id, step_index, carry) VALUES (%s, %s, %s) "
                   f"ON CONFLICT (operation_id, step_index) DO UPDATE SET carry = excluded.carry RETURNING 1",
                   [operation_id, index, carry])
    if during is not None:
        during()
    return rows[0][0] if rows else None


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
    """Whether a statement can be sent without waiting for it (``_fetch(during=…)``): on
    PostgreSQL, outside a transaction, where it commits by itself."""
    return _direct()


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


def _fetch(sql, params, *, during=None):
    """Run one statement and return its rows. ``during()`` runs while the server runs it where
    ``can_overlap()``, else after it.

    On PostgreSQL in autocommit, the statement goes straight to the driver's connection, its
    parameters bound by the server: a step's statements cost the client less than through
    Django's cursor and psycopg's client-side binding (``bench/README.md``, 2026-12-07, late).
    Inside a transaction, with queries being logged (DEBUG, ``CaptureQueriesContext``), with
    execute wrappers, on a connection whose client_encoding is not UTF8, or with a parameter of
    another type, Django's cursor runs it as any query."""
    if _direct():
        values = _text_params(params)
        if values is not None:
            return _fetch_direct(sql, values, during)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if during is not None:
        during()
    return rows


def _direct():
    wrapper = connections[DEFAULT_DB_ALIAS]
    if (wrapper.vendor != "postgresql" or wrapper.in_atomic_block or wrapper.queries_logged
            or wrapper.execute_wrappers or _jsonb() is None):
        return False
    wrapper.ensure_connection()
    # The statement and its text go as UTF-8: only a connection that speaks it reads them as sent
    # (a host may set another client_encoding in OPTIONS; psycopg's cursor encodes for it).
    return wrapper.connection.pgconn.parameter_status(b"client_encoding") == b"UTF8"


@functools.cache
def _jsonb():
    """psycopg 3's Jsonb (Django's JSONField values), or None with psycopg2: no direct path then."""
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if not is_psycopg3:
        return None
    from psycopg.types.json import Jsonb

    return Jsonb


def _fetch_direct(sql, values, during):
    """``_fetch`` on psycopg's connection: sent, ``during()`` meanwhile, then read, whatever
    happened meanwhile (the connection stays usable); errors in Django's classes."""
    from psycopg import errors, pq
    from psycopg.adapt import Transformer
    from psycopg.generators import fetch_many, send

    wrapper = connections[DEFAULT_DB_ALIAS]
    wrapper.ensure_connection()
    driver = wrapper.connection
    pgconn = driver.pgconn
    with wrapper.wrap_database_errors:
        pgconn.send_query_params(_numbered(sql), values)
        driver.wait(send(pgconn))
    try:
        if during is not None:
            during()
    finally:
        with wrapper.wrap_database_errors:
            results = driver.wait(fetch_many(pgconn))
            for result in results:
                if result.status == pq.ExecStatus.FATAL_ERROR:
                    raise errors.error_from_result(result, encoding=driver.info.encoding)
    result = results[0]
    rows = Transformer.from_context(driver)  # the connection's loaders, as Django's cursor has them
    rows.set_pgresult(result)
    return rows.load_rows(0, result.ntuples, tuple)


@functools.lru_cache(maxsize=256)
def _numbered(sql):
    """Django's ``%s`` placeholders as PostgreSQL's ``$1, $2, …`` (``%%`` a literal ``%``)."""
    numbers = itertools.count(1)
    return re.sub(r"%[s%]", lambda match: f"${next(numbers)}" if match.group() == "%s" else "%", sql).encode()


def _text_params(params):
    """The parameters in PostgreSQL's text format, for the server to bind by the columns' types
    (None: NULL). The types a step's statements use; None when another one is among them."""
    jsonb, values = _jsonb(), []
    for value in params:
        if value is None:
            values.append(None)
        elif isinstance(value, str):  # a TextChoices member too: its value
            values.append(value.encode())
        elif isinstance(value, bool):
            values.append(b"t" if value else b"f")
        elif isinstance(value, int):
            values.append(int.__repr__(value).encode())
        elif isinstance(value, datetime.datetime):
            values.append(value.isoformat().encode())
        elif isinstance(value, jsonb) and value.dumps is not None:  # Django's JSONField value
            values.append(value.dumps(value.obj).encode())
        else:
            return None
    return values


def load_json(value):
    """JSON columns come back from raw SQL as text on both backends."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode()
    return json.loads(value) if isinstance(value, str) else value
