"""Fast settings for the test suite; the database comes from DATABASE_URL or SQLite."""

import os

import dj_database_url

from .base import *  # noqa: F403
from .base import DATABASES

SECRET_KEY = "laoshi-test-key"
DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_AUTOREFRESH = True
if not os.environ.get("DATABASE_URL"):
    DATABASES["default"] = dj_database_url.parse("sqlite:///:memory:")
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "memory://")
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
LOGGING = {"version": 1, "disable_existing_loggers": False}
