from django.apps import AppConfig


class OperationsConfig(AppConfig):
    name = "operations"
    verbose_name = "Operations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_delete

        from . import catalogue, checks, integration, uploads, waiting  # noqa: F401  (checks, wait step register themselves)
        from .models import Operation

        catalogue.autodiscover()
        integration.install()
        post_delete.connect(uploads.discard_on_delete, sender=Operation, dispatch_uid="operations.uploads")
