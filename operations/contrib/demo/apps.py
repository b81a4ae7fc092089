from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "operations.contrib.demo"
    label = "operations_demo"
    verbose_name = "Operations: demo kinds"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import cli, conf  # noqa: F401  (the CLI verbs; the settings, for manage.py check)
