from django.db import migrations


class Migration(migrations.Migration):
    """Once dropped the database foreign key of the demo's record tables; those tables belong to
    operations.contrib.demo now (its 0001 takes over tables an older version created here)."""

    dependencies = [("operations", "0004_hot_updates")]
    operations = []
