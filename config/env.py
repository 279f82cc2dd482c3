"""Read the process environment in one place.

Every setting that comes from the environment goes through these helpers, so a
deployment can be audited by reading this module and ``config/settings``.
A secret may also come from a file: ``DJANGO_SECRET_KEY_FILE=/run/secrets/key``.
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured


def env(name: str, default: str | None = None) -> str | None:
    """Return the variable ``name``, or the content of the file named by ``name_FILE``."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_path} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    """Return a boolean variable; accepts 1/0, true/false, yes/no, on/off."""
    value = env(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use 1/0, true/false).")


def env_int(name: str, default: int) -> int:
    """Return an integer variable."""
    value = env(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer.") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    """Return a comma-separated list variable."""
    value = env(name)
    if value is None or value.strip() == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_required(name: str) -> str:
    """Return a variable that must be set, or stop start-up with a clear message."""
    value = env(name)
    if not value:
        raise ImproperlyConfigured(
            f"The environment variable {name} is required in production (or {name}_FILE). "
            "See .env.example."
        )
    return value
