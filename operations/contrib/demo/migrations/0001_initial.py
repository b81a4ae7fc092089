"""The demo's record tables.

Before the demo kinds became an optional app, the operations app itself created these tables as
``operations_record`` and ``operations_stagedrecord``. A database that has them keeps its rows:
they are renamed to this app's names instead of being created anew.
"""

import django.db.models.deletion
from django.db import migrations, models


class AdoptOrCreateModel(migrations.CreateModel):
    """CreateModel that takes over ``legacy_table`` (by renaming it) when the database has it."""

    def __init__(self, *args, legacy_table, **kwargs):
        self.legacy_table = legacy_table
        super().__init__(*args, **kwargs)

    def deconstruct(self):
        name, args, kwargs = super().deconstruct()
        return name, args, {**kwargs, "legacy_table": self.legacy_table}

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.name)
        tables = schema_editor.connection.introspection.table_names()
        if self.legacy_table in tables and model._meta.db_table not in tables:
            schema_editor.alter_db_table(model, self.legacy_table, model._meta.db_table)
        else:
            super().database_forwards(app_label, schema_editor, from_state, to_state)


def record_fields():
    return [
        ("external_id", models.BigIntegerField(help_text="The row's id in its source (CSV column id).")),
        ("name", models.CharField(max_length=200)),
        ("email", models.CharField(max_length=254)),
        ("amount", models.DecimalField(decimal_places=2, max_digits=14)),
        ("date", models.DateField()),
        ("pk", models.CompositePrimaryKey("operation", "external_id", blank=True, editable=False,
                                          primary_key=True, serialize=False)),
        ("operation", models.ForeignKey(db_constraint=False, db_index=False,
                                        on_delete=django.db.models.deletion.CASCADE, related_name="+",
                                        to="operations.operation")),
    ]


class Migration(migrations.Migration):
    initial = True

    dependencies = [("operations", "0005_records_without_fk_check")]

    operations = [
        AdoptOrCreateModel(name="Record", fields=record_fields(), options={"abstract": False},
                           legacy_table="operations_record"),
        AdoptOrCreateModel(name="StagedRecord", fields=record_fields(), options={"abstract": False},
                           legacy_table="operations_stagedrecord"),
    ]
