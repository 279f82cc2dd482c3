"""Production: PostgreSQL, Redis, DEBUG off, and a loud stop on a missing secret."""

from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_int, env_required

from .base import *  # noqa: F403
from .base import DATABASES

DEBUG = False
SECRET_KEY = env_required("DJANGO_SECRET_KEY")
_WEAK_KEYS = {"change-me", "changeme", "secret", "laoshi-local-development-key-not-for-production"}
if len(SECRET_KEY) < 50 or SECRET_KEY in _WEAK_KEYS or len(set(SECRET_KEY)) < 5:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is missing or weak: set 50+ random characters, e.g. "
        "python -c 'import secrets; print(secrets.token_urlsafe(64))'"
    )
env_required("DATABASE_URL")
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured("Production needs PostgreSQL: DATABASE_URL=postgres://...")
CELERY_BROKER_URL = env_required("CELERY_BROKER_URL")
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 4 * 60 * 60}

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 60 * 60 * 24 * 30)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
