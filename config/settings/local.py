"""The embedded default: SQLite, the filesystem broker, DEBUG on, loopback only."""

from config.env import env

from .base import *  # noqa: F403
from .base import VAR_DIR

DEBUG = True
# A development key, never used with DEBUG off (production.py refuses it).
SECRET_KEY = env("DJANGO_SECRET_KEY") or "laoshi-local-development-key-not-for-production"
VAR_DIR.mkdir(parents=True, exist_ok=True)
for _folder in ("out", "processed", "control"):
    (VAR_DIR / "celery" / _folder).mkdir(parents=True, exist_ok=True)
ALLOWED_HOSTS = [*ALLOWED_HOSTS, "testserver"]  # noqa: F405
