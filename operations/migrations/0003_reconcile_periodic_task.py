from django.db import migrations


class Migration(migrations.Migration):
    """Once installed the reconciler's periodic task; beat adds it now (operations.beat)."""

    dependencies = [("operations", "0002_operations")]
    operations = []
