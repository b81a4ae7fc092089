"""The demo's data rows: what csv_import and bulk_insert store, and bulk_insert's staging area."""

from django.db import connections, models

from operations.models import Operation


class RecordFields(models.Model):
    """The columns of a data row: those of the demo CSV (id, name, email, amount, date)."""

    # No database constraint: PostgreSQL would check it row by row at every chunk's commit (60 % of
    # a 1M-row import's time). A chunk commits with its operation's fenced checkpoint UPDATE, so
    # the operation exists. Deleting an operation deletes its rows with one DELETE per table
    # (``delete_rows_of``, on pre_delete), not row by row through Django's collector, which would
    # load a million rows to list them on the admin's confirmation page.
    operation = models.ForeignKey(Operation, on_delete=models.DO_NOTHING, related_name="+", db_index=False,
                                  db_constraint=False)
    external_id = models.BigIntegerField(help_text="The row's id in its source (CSV column id).")
    name = models.CharField(max_length=200)
    email = models.CharField(max_length=254)
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    date = models.DateField()

    COLUMNS = ("operation_id", "external_id", "name", "email", "amount", "date")

    class Meta:
        abstract = True


class Record(RecordFields):
    """A data row an operation stored (CSV import, bulk insert); cancel removes its rows.

    The primary key (operation, external id) is the only index: it makes a replayed chunk or a
    duplicate id in a file impossible to store twice, and serves per-operation counts and deletes.
    """

    pk = models.CompositePrimaryKey("operation", "external_id")


class StagedRecord(RecordFields):
    """Rows of an all-or-none insert, committed chunk by chunk but not yet published as records."""

    pk = models.CompositePrimaryKey("operation", "external_id")




def delete_rows_of(sender, instance, using, **kwargs):
    """pre_delete of an Operation: its records and staged records go with it, one DELETE each."""
    connection = connections[using]
    with connection.cursor() as cursor:
        for model in (Record, StagedRecord):
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(model._meta.db_table)} "
                           f"WHERE {connection.ops.quote_name('operation_id')} = %s", [instance.pk])
