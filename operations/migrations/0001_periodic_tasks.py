from django.db import migrations

from operations.beat import install_periodic_tasks_migration


class Migration(migrations.Migration):
    dependencies = [("django_celery_beat", "0019_alter_periodictasks_options")]
    operations = [migrations.RunPython(install_periodic_tasks_migration, migrations.RunPython.noop)]
