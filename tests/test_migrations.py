"""Migrations: the demo app takes over the record tables an earlier version made, rows included."""

import datetime

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from operations.contrib.demo.models import Record, StagedRecord
from operations.models import Operation

# On every database of the matrix (the integration runs are the PostgreSQL ones).
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _migrate(*targets):
    executor = MigrationExecutor(connection)
    executor.migrate(list(targets))
    executor.loader.build_graph()


def _tables():
    return set(connection.introspection.table_names())


def test_a_database_made_by_an_earlier_version_keeps_its_records():
    """Before 0.1.0 the operations app created operations_record / operations_stagedrecord itself."""
    _migrate(("operations_demo", None))
    assert not {"operations_demo_record", "operations_demo_stagedrecord"} & _tables()
    with connection.schema_editor() as editor:  # the tables as the earlier version left them
        for model, legacy in ((Record, "operations_record"), (StagedRecord, "operations_stagedrecord")):
            editor.create_model(model)
            editor.alter_db_table(model, model._meta.db_table, legacy)
    operation = Operation.objects.create(kind="csv_import")
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO operations_record (operation_id, external_id, name, email, amount, date) "
                       "VALUES (%s, 7, 'Ada', 'ada@example.com', 12.50, %s)",
                       [operation.pk, datetime.date(2026, 1, 1)])

    _migrate(("operations_demo", "0001_initial"))

    tables = _tables()
    assert {"operations_demo_record", "operations_demo_stagedrecord"} <= tables
    assert not {"operations_record", "operations_stagedrecord"} & tables
    (record,) = Record.objects.filter(operation=operation)
    assert (record.external_id, record.name, str(record.amount)) == (7, "Ada", "12.50")
    with pytest.raises(IntegrityError), transaction.atomic():  # its primary key came along
        Record.objects.create(operation=operation, external_id=7, name="again", email="x", amount="1",
                              date=datetime.date(2026, 1, 2))
