"""Local development: the embedded default (SQLite + filesystem broker under var/), DEBUG on."""

from .base import *  # noqa: F403
from .base import DEV_ONLY_SECRET_KEY, env, env_bool, env_list

DEBUG = env_bool("DEBUG", True)
SECRET_KEY = env("SECRET_KEY") or DEV_ONLY_SECRET_KEY
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
# Serve static files straight from the apps while developing (no collectstatic step).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

from .base import STATIC_ROOT  # noqa: E402

STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns about a missing folder even when using finders
