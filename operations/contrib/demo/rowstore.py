"""Bulk writes of data rows: COPY on PostgreSQL (psycopg 3), batched INSERTs elsewhere."""

from django.db import connection


def is_postgresql():
    return connection.vendor == "postgresql"


def _columns(model, columns):
    table = connection.ops.quote_name(model._meta.db_table)
    return table, ", ".join(connection.ops.quote_name(c) for c in columns)


def copy_csv(model, columns, pieces):
    """PostgreSQL: stream CSV bytes (no header), piece by piece, into ``model``'s table.

    PostgreSQL parses one piece while the next is prepared here.
    """
    table, names = _columns(model, columns)
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN WITH (FORMAT csv)") as copy:
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
