"""Benchmarks: production-like (DEBUG off) on any DATABASE_URL, PostgreSQL or SQLite.

``bench/annotate_load.py`` sets DATABASE_URL and a fresh DJANGO_SECRET_KEY for each
run and serves on loopback only, so the HTTPS settings of production.py are left out.
"""

from config.env import env_required

from .base import *  # noqa: F403

DEBUG = False
SECRET_KEY = env_required("DJANGO_SECRET_KEY")
# A benchmark against the SQLite file under var/ by mistake would measure the wrong thing.
env_required("DATABASE_URL")
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
# The API under test serves no static files: no manifest (and no collectstatic) needed.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
