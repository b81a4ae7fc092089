from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "operations.contrib.demo"
    label = "operations_demo"
    verbose_name = "Operations: demo kinds"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import pre_delete

        from operations.models import Operation

        from . import cli, conf  # noqa: F401  (the CLI verbs; the settings, for manage.py check)
        from .models import delete_rows_of

        pre_delete.connect(delete_rows_of, sender=Operation, dispatch_uid="operations_demo.rows")
