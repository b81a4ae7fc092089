from django.db import migrations

from operations.beat import install_periodic_tasks_migration


class Migration(migrations.Migration):
    dependencies = [("operations", "0002_operations")]
    operations = [migrations.RunPython(install_periodic_tasks_migration, migrations.RunPython.noop)]
