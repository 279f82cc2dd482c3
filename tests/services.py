"""Checks for the real services tests need, and the switch that makes their absence fail.

On a laptop a missing PostgreSQL, Redis or Chromium skips the tests that need it, with
a clear message. In CI, LAOSHI_REQUIRE_SERVICES=1 turns each of those skips into a
failure, so a broken set-up can never pass as green.
"""

import os
import shutil
import socket

import pytest

REQUIRED = os.environ.get("LAOSHI_REQUIRE_SERVICES", "") in {"1", "true", "yes"}
CHROMIUM = os.environ.get("LAOSHI_CHROMIUM", "/usr/bin/chromium")


def unavailable(what: str) -> None:
    """Skip (or, with LAOSHI_REQUIRE_SERVICES=1, fail) a test whose service is missing."""
    message = f"{what} is not available"
    if REQUIRED:
        pytest.fail(f"{message}, and LAOSHI_REQUIRE_SERVICES=1 requires it", pytrace=False)
    pytest.skip(f"{message} (set it up, or see README: Tests)")


def redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_reachable() -> bool:
    from urllib.parse import urlparse

    parsed = urlparse(redis_url())
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), 1):
            return True
    except OSError:
        return False


def chromium_path() -> str | None:
    return CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
