from django.db import migrations


def install(apps, schema_editor):
    from operations.beat import install_periodic_tasks

    install_periodic_tasks(
        apps.get_model("django_celery_beat", "PeriodicTask"),
        apps.get_model("django_celery_beat", "CrontabSchedule"),
        apps.get_model("django_celery_beat", "IntervalSchedule"),
    )


class Migration(migrations.Migration):
    dependencies = [("django_celery_beat", "0019_alter_periodictasks_options")]
    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
