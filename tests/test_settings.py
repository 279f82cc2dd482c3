"""Production settings start only with a sound environment, and then pass check --deploy.

Each case runs in a subprocess with a controlled environment (nothing inherited but PATH),
because settings are read once per process.
"""

import os
import secrets
import subprocess
import sys

import pytest

from tests.test_compose import (
    ENV_EXAMPLE,
    PRODUCTION_SETTINGS,
    ROOT,
    production_required_env,
    read_env_file,
)

SETUP = "import django; django.setup()"
PRINT_SECRET_KEY = SETUP + "; from django.conf import settings; print(settings.SECRET_KEY)"
CHECK_DEPLOY = ["manage.py", "check", "--deploy", "--fail-level", "WARNING"]


def _documented_env() -> dict[str, str]:
    """Return .env.example's variables, with a strong random key instead of the placeholder."""
    environment = read_env_file(ENV_EXAMPLE)
    environment["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(64)
    return environment


def _run(args: list[str], environment: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ.get("PATH", ""),
        # Keep runtime files of the check out of the working tree.
        "LAOSHI_VAR_DIR": str(tmp_path / "var"),
        **environment,
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
    }
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def _error(result: subprocess.CompletedProcess) -> str:
    """Return the last line of stderr: the exception that stopped start-up."""
    assert result.returncode != 0, result.stdout
    return result.stderr.strip().splitlines()[-1]


def test_check_deploy_passes_with_the_documented_environment(tmp_path):
    # No database check runs without --database, so nothing connects to DATABASE_URL.
    result = _run(CHECK_DEPLOY, _documented_env(), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.parametrize("name", sorted(production_required_env(PRODUCTION_SETTINGS)))
def test_it_stops_without_a_required_variable(name, tmp_path):
    environment = _documented_env()
    del environment[name]
    error = _error(_run(["-c", SETUP], environment, tmp_path))
    assert error.startswith("django.core.exceptions.ImproperlyConfigured")
    assert name in error


def test_it_stops_with_an_empty_secret_key(tmp_path):
    environment = {**_documented_env(), "DJANGO_SECRET_KEY": ""}
    assert "DJANGO_SECRET_KEY" in _error(_run(["-c", SETUP], environment, tmp_path))


@pytest.mark.parametrize(
    "key",
    [
        read_env_file(ENV_EXAMPLE)["DJANGO_SECRET_KEY"],
        "change-me",
        "laoshi-local-development-key-not-for-production",
        secrets.token_urlsafe(20),
        "a" * 64,
        "ab" * 40,
    ],
    ids=["env-example-placeholder", "change-me", "local-key", "short", "one-char", "two-chars"],
)
def test_it_stops_with_a_weak_secret_key(key, tmp_path):
    environment = {**_documented_env(), "DJANGO_SECRET_KEY": key}
    error = _error(_run(["-c", SETUP], environment, tmp_path))
    assert error.startswith("django.core.exceptions.ImproperlyConfigured")
    assert "DJANGO_SECRET_KEY" in error


def test_it_reads_the_secret_key_from_a_file(tmp_path):
    key = secrets.token_urlsafe(64)
    key_file = tmp_path / "django_secret_key"
    key_file.write_text(key + "\n")
    environment = _documented_env()
    del environment["DJANGO_SECRET_KEY"]
    environment["DJANGO_SECRET_KEY_FILE"] = str(key_file)
    result = _run(["-c", PRINT_SECRET_KEY], environment, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == key


def test_it_stops_with_a_weak_secret_key_from_a_file(tmp_path):
    key_file = tmp_path / "django_secret_key"
    key_file.write_text("change-me\n")
    environment = {**_documented_env(), "DJANGO_SECRET_KEY_FILE": str(key_file)}
    assert "DJANGO_SECRET_KEY" in _error(_run(["-c", SETUP], environment, tmp_path))


def test_it_stops_when_the_secret_key_file_cannot_be_read(tmp_path):
    environment = {**_documented_env(), "DJANGO_SECRET_KEY_FILE": str(tmp_path / "missing")}
    error = _error(_run(["-c", SETUP], environment, tmp_path))
    assert "DJANGO_SECRET_KEY_FILE" in error
