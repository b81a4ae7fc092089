"""Production: every secret and address comes from the environment; refuses to start without them."""

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import DEV_ONLY_SECRET_KEY, env, env_bool, env_int, env_list

SECRET_KEY = env("SECRET_KEY", "")
if (len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or SECRET_KEY.startswith("django-insecure")
        or SECRET_KEY == DEV_ONLY_SECRET_KEY):
    raise ImproperlyConfigured(
        "SECRET_KEY must be set in the environment for production: at least 50 random "
        "characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))')."
    )
if not env("DATABASE_URL"):
    raise ImproperlyConfigured("DATABASE_URL must be set in the environment for production.")
if not env("CELERY_BROKER_URL"):
    raise ImproperlyConfigured("CELERY_BROKER_URL must be set in the environment for production.")

DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS")
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must list the site's host names in production.")

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# HTTPS everywhere; a TLS-terminating proxy in front sets X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
SECURE_REDIRECT_EXEMPT = [r"^healthz/$"]
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
