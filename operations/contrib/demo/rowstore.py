"""Bulk writes of data rows: COPY on PostgreSQL (psycopg 3), batched INSERTs elsewhere."""

from django.db import connection


def is_postgresql():
    return connection.vendor == "postgresql"


def _columns(model, columns):
    table = connection.ops.quote_name(model._meta.db_table)
    return table, ", ".join(connection.ops.quote_name(c) for c in columns)


#: COPY's text format read as CSV: for bytes with no quote, no backslash and no CR, where both
#: formats read the same fields (an empty field is NULL in both); PostgreSQL parses it faster.
PLAIN_CSV = "FORMAT text, DELIMITER ',', NULL ''"


def copy_csv(model, columns, pieces, *, plain=False, durable=True):
    """PostgreSQL: stream CSV bytes (no header), piece by piece, into ``model``'s table.

    PostgreSQL parses one piece while the next is prepared here. ``plain``: the bytes hold no
    quote, backslash or CR (see ``PLAIN_CSV``). ``durable=False``: the enclosing transaction
    commits without waiting for the WAL flush (``bus.COMMIT_MODE``'s trade: a database crash may
    undo the last fraction of a second of such commits, each one whole).
    """
    table, names = _columns(model, columns)
    options = PLAIN_CSV if plain else "FORMAT csv"
    with connection.cursor() as cursor:
        if not durable:
            cursor.execute("SELECT set_config('synchronous_commit', 'off', true)")
        with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN WITH ({options})") as copy:
            for piece in pieces:
                copy.write(piece)


def write_rows(model, columns, rows):
    """Insert tuples of values for ``columns`` into ``model``'s table."""
    table, names = _columns(model, columns)
    with connection.cursor() as cursor:
        if is_postgresql():
            with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            marks = ", ".join(["%s"] * len(columns))
            cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
