from django.db import migrations


class Migration(migrations.Migration):
    """Once installed the periodic tasks; beat adds them now (operations.beat), with the interval
    the settings give when it starts. Kept so the migration history stays the same."""

    dependencies = [("django_celery_beat", "0019_alter_periodictasks_options")]
    operations = []
