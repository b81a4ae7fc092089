"""Settings shared by every environment; everything that differs comes from the environment.

The defaults are the *embedded default*: SQLite and Celery's filesystem broker under ``var/``,
so the project runs on a fresh machine with no servers. ``DATABASE_URL`` and
``CELERY_BROKER_URL`` switch to PostgreSQL and Redis / RabbitMQ.
"""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def env(name, default=None):
    return os.environ.get(name, default)


def env_bool(name, default=False):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use true/false)")


def env_int(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None


def env_list(name, default=""):
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# Everything the embedded default writes (database, broker folders, uploads) lives here.
VAR_DIR = Path(env("TAP_VAR_DIR", BASE_DIR / "var")).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = env("SECRET_KEY", "")
#: The key dev and test settings fall back to; it is public, so production refuses it.
DEV_ONLY_SECRET_KEY = "dev-only-insecure-key-never-used-in-production-4f8a1c2e9b7d"
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "django_celery_results",
    "django_celery_beat",
    "accounts",
    # The app, installed as any host installs it (pip install -e .; docs/installation.md), and
    # its optional demo kinds.
    "operations",
    "operations.contrib.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "tapproject.urls"
WSGI_APPLICATION = "tapproject.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database_from_url(url):
    """One database setting from a URL; SQLite gets WAL, a busy timeout and IMMEDIATE transactions.

    IMMEDIATE transactions take SQLite's write lock up front, so two writers queue on the busy
    timeout instead of failing with "database is locked" when a reader upgrades to a writer.
    """
    config = dj_database_url.parse(url, conn_max_age=600, conn_health_checks=True)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        config["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        }
        if config["NAME"] and config["NAME"] != ":memory:":
            Path(config["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    elif config["ENGINE"] == "django.db.backends.postgresql":
        config.setdefault("OPTIONS", {})
        config["OPTIONS"].setdefault("connect_timeout", 10)
    return config


DATABASE_URL = env("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
DATABASES = {"default": database_from_url(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "operations:list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
MEDIA_ROOT = VAR_DIR / "media"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL") or "filesystem://localhost/"
BROKER_DIR = VAR_DIR / "broker"
if CELERY_BROKER_URL.startswith("filesystem://"):
    # The operations app publishes to it atomically (operations/brokers/filesystem.py).
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        # The default 1 s poll would add a second to every step of a chain.
        "polling_interval": float(env("CELERY_POLLING_INTERVAL", "0.05")),
    }
else:
    # Longer than any step: a message is only redelivered when its worker is really gone.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 6 * 3600),
    }
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
CELERY_RESULT_EXPIRES = timedelta(days=env_int("CELERY_RESULT_EXPIRES_DAYS", 1))
# JSON only: a pickled message is refused by the worker, never executed.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
# A message is acknowledged after its task ran, and given back if the worker dies meanwhile.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's prefork pool, whose children can all be killed at once (the OOM killer) without
# wedging the worker (operations/pool.py).
CELERY_WORKER_POOL = "operations.pool:TaskPool"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_TIMEZONE = TIME_ZONE
# Celery's Django fixup closes every database connection around every task unless this is set;
# operations.tasks closes only the stale ones (CONN_MAX_AGE, errors) before each task instead.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000)
CELERY_BEAT_SCHEDULER = "operations.beat:OperationsScheduler"
CELERY_TASK_ALWAYS_EAGER = False

# Throttle counters (and any other cache use) are shared by all web processes of a host through
# files; set REDIS_CACHE_URL to share them across hosts.
if env("REDIS_CACHE_URL"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                          "LOCATION": env("REDIS_CACHE_URL")}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                          "LOCATION": str(VAR_DIR / "cache")}}

# --- REST framework -------------------------------------------------------------------------
# The operations API carries its own permission, paging, throttle and schema classes; the site
# picks how people authenticate: API tokens (accounts) or the session.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}

# --- the operations app (docs/settings.md) --------------------------------------------------
# Every one is optional; tapproject reads them from the environment.
# How long a running operation may go without a heartbeat before beat calls it interrupted.
TAP_HEARTBEAT_LEASE = env_int("TAP_HEARTBEAT_LEASE", 120)
TAP_RECONCILE_INTERVAL = env_int("TAP_RECONCILE_INTERVAL", 30)
# Whether beat resumes interrupted operations of kinds that do not say (the demo kinds do).
TAP_AUTO_RESUME = env_bool("TAP_AUTO_RESUME", False)
TAP_POISON_LIMIT = env_int("TAP_POISON_LIMIT", 3)
# PostgreSQL: whether a step's advance waits for the WAL flush. Off (the default), a database
# crash can undo the last fraction of a second of advances — each together with its step's own
# writes, so those steps run again; nothing is lost or doubled. Status changes and in-step
# checkpoints always commit durably.
TAP_DURABLE_STEP_COMMITS = env_bool("TAP_DURABLE_STEP_COMMITS", False)
# The API's rate limit of state changes per user.
TAP_CONTROL_THROTTLE = env("TAP_CONTROL_THROTTLE", "120/min")
# Anyone may sign up here: a user (not staff) has at most 20 unfinished operations of at most an
# hour of worker time each, unless a staff member gives them more (admin: Operation quotas).
TAP_USER_MAX_UNFINISHED = env_int("TAP_USER_MAX_UNFINISHED", 20)
TAP_USER_MAX_WORK_SECONDS = env_int("TAP_USER_MAX_WORK_SECONDS", 3600)
# The demo kinds (operations.contrib.demo). CSV import / summary: server-side files live in TAP_CSV_DIR (the demo files too), uploads in
# TAP_UPLOAD_DIR; a chunk of TAP_CSV_CHUNK_ROWS rows commits with its checkpoint.
TAP_CSV_DIR = Path(env("TAP_CSV_DIR", VAR_DIR / "csv"))
TAP_UPLOAD_DIR = Path(env("TAP_UPLOAD_DIR", VAR_DIR / "uploads"))
TAP_CSV_CHUNK_ROWS = env_int("TAP_CSV_CHUNK_ROWS", 50_000)
TAP_CSV_MAX_UPLOAD_MB = env_int("TAP_CSV_MAX_UPLOAD_MB", 200)
TAP_CSV_IMPORT_MAX_CONCURRENT = env_int("TAP_CSV_IMPORT_MAX_CONCURRENT", 1)
TAP_BULK_CHUNK_ROWS = env_int("TAP_BULK_CHUNK_ROWS", 10_000)
# batch_sum: each task takes a random time in this range (seconds); tests set 0.
TAP_BATCH_MIN_SECONDS = float(env("TAP_BATCH_MIN_SECONDS", "3"))
TAP_BATCH_MAX_SECONDS = float(env("TAP_BATCH_MAX_SECONDS", "10"))
# Extra modules that register operation kinds (besides each app's ``operation_kinds`` module).
TAP_KIND_MODULES = env_list("TAP_KIND_MODULES")
