"""tapproject: pause-able, resume-able, cancellable long operations for Django on Celery."""

from .celery import app as celery_app

__all__ = ("celery_app",)
