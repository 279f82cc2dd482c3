"""Static checks of the production deployment: docker-compose.yml, Dockerfile, .env.example.

No Docker engine is needed: the files are parsed, and compared with what the production
settings read from the environment.
"""

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
# The modules that config.settings.production is built from.
PRODUCTION_SETTINGS = [ROOT / "config/settings/base.py", ROOT / "config/settings/production.py"]

SERVICES = {"postgres", "redis", "web", "worker-default", "worker-gpu", "beat", "flower"}
APP_SERVICES = {"migrate", "web", "worker-default", "worker-gpu", "beat", "flower"}

_ENV_LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")
_ENV_REQUIRED = re.compile(r"""\benv_required\(\s*["']([A-Z][A-Z0-9_]*)["']""")
_ENV_READ = re.compile(r"""\benv(?:_bool|_int|_list|_required)?\(\s*["']([A-Z][A-Z0-9_]*)["']""")
# ${VAR}, ${VAR:-default}, ${VAR:?error}; $${VAR} is an escaped literal for the container.
_INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)(?:(:?[-?+])[^}]*)?\}")


def read_env_file(path: Path) -> dict[str, str]:
    """Return the variables a docker env_file sets (commented-out lines excluded)."""
    variables = {}
    for line in path.read_text().splitlines():
        match = _ENV_LINE.match(line.strip())
        if match and not match.group(1):
            variables[match.group(2)] = match.group(3)
    return variables


def production_required_env(sources: list[Path] | None = None) -> set[str]:
    """Return the names passed to env_required("NAME") in config/settings/ and config/env.py."""
    if sources is None:
        sources = [*sorted((ROOT / "config/settings").glob("*.py")), ROOT / "config/env.py"]
    return {name for path in sources for name in _ENV_REQUIRED.findall(path.read_text())}


def _documented_env() -> set[str]:
    names = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = _ENV_LINE.match(line.strip())
        if match:
            names.add(match.group(2))
    return names


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _command(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def _option(command: list[str], *names: str) -> str | None:
    """Return the value of a command-line option given as "--name value" or "--name=value"."""
    for index, arg in enumerate(command):
        if arg in names and index + 1 < len(command):
            return command[index + 1]
        for name in names:
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
    return None


def _environment(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {name: "" if value is None else str(value) for name, value in environment.items()}


def _env_files(service: dict) -> list[Path]:
    """Return the env files of a service; the untracked .env is read as its template."""
    entries = service.get("env_file") or []
    if isinstance(entries, str | dict):
        entries = [entries]
    paths = []
    for entry in entries:
        name = entry["path"] if isinstance(entry, dict) else entry
        paths.append(ENV_EXAMPLE if Path(name).name == ".env" else COMPOSE.parent / name)
    return paths


def _provided_env(service: dict) -> set[str]:
    names = {name for name, value in _environment(service).items() if value}
    for path in _env_files(service):
        names |= {name for name, value in read_env_file(path).items() if value}
    return names


def _app_services(compose: dict) -> dict[str, dict]:
    """Return the services that run Django or Celery."""
    return {
        name: service
        for name, service in compose["services"].items()
        if (command := _command(service))
        and (command[0] in {"gunicorn", "celery"} or "manage.py" in command)
    }


def test_it_defines_the_seven_services():
    assert SERVICES <= set(_compose()["services"])


def test_it_finds_every_django_and_celery_service():
    assert set(_app_services(_compose())) == APP_SERVICES


def test_redis_persists_every_message_and_never_evicts():
    redis = _compose()["services"]["redis"]
    command = _command(redis)
    assert redis["image"].startswith("redis:7")
    assert _option(command, "--appendonly") == "yes"
    assert _option(command, "--maxmemory-policy") == "noeviction"


@pytest.mark.parametrize("name", ["postgres", "redis"])
def test_the_data_services_have_a_healthcheck_and_a_volume(name):
    service = _compose()["services"][name]
    assert service["healthcheck"]["test"]
    assert service["volumes"]


def test_the_gpu_worker_consumes_only_the_gpu_queue_one_job_at_a_time():
    command = _command(_compose()["services"]["worker-gpu"])
    assert command[:4] == ["celery", "-A", "config", "worker"]
    assert _option(command, "-Q", "--queues") == "gpu"
    assert _option(command, "-c", "--concurrency") == "1"
    assert _option(command, "--prefetch-multiplier") == "1"


def test_the_gpu_worker_reserves_an_nvidia_gpu():
    deploy = _compose()["services"]["worker-gpu"]["deploy"]
    devices = deploy["resources"]["reservations"]["devices"]
    assert any(
        device.get("driver") == "nvidia"
        and "gpu" in device.get("capabilities", [])
        and (device.get("count") in {1, "all"} or device.get("device_ids"))
        for device in devices
    )


def test_the_default_worker_consumes_the_default_queue():
    command = _command(_compose()["services"]["worker-default"])
    assert command[:4] == ["celery", "-A", "config", "worker"]
    assert _option(command, "-Q", "--queues") == "default"
    assert _option(command, "--prefetch-multiplier") == "1"


def test_web_runs_gunicorn_on_port_8000():
    command = _command(_compose()["services"]["web"])
    assert command[0] == "gunicorn"
    assert "config.wsgi" in command or "config.wsgi:application" in command
    assert _option(command, "-b", "--bind") == "0.0.0.0:8000"


def test_web_starts_only_after_the_migrations_ran():
    services = _compose()["services"]
    assert _command(services["migrate"])[:3] == ["python", "manage.py", "migrate"]
    depends_on = services["web"]["depends_on"]
    assert depends_on["migrate"]["condition"] == "service_completed_successfully"
    assert depends_on["postgres"]["condition"] == "service_healthy"
    assert depends_on["redis"]["condition"] == "service_healthy"


def test_beat_and_flower_run_the_celery_app():
    services = _compose()["services"]
    assert _command(services["beat"])[:4] == ["celery", "-A", "config", "beat"]
    flower = _command(services["flower"])
    assert flower[:4] == ["celery", "-A", "config", "flower"]
    assert _option(flower, "--port") == "5555"
    assert any(str(port).endswith(":5555") for port in services["flower"]["ports"])


def test_every_django_and_celery_service_uses_the_production_settings():
    for name, service in _app_services(_compose()).items():
        settings_module = _environment(service).get("DJANGO_SETTINGS_MODULE")
        assert settings_module == "config.settings.production", name


def test_the_required_variables_are_found_by_scanning_the_settings():
    # A sanity floor, so that a broken scan cannot make the next test pass vacuously.
    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL"} <= production_required_env()


def test_every_required_variable_reaches_every_django_and_celery_service():
    required = production_required_env()
    for name, service in _app_services(_compose()).items():
        missing = required - _provided_env(service)
        assert not missing, f"{name} lacks {sorted(missing)}"


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in _strings(key) + _strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return [node] if isinstance(node, str) else []


def test_every_interpolated_variable_without_a_default_is_in_the_env_example():
    documented = read_env_file(ENV_EXAMPLE)
    for text in _strings(_compose()):
        for name, operator in _INTERPOLATION.findall(text):
            # ${VAR:-x} and ${VAR:+x} work unset; ${VAR} and ${VAR:?message} need a value.
            if operator and "?" not in operator:
                continue
            assert documented.get(name), f"${{{name}}} is not set in .env.example"


def test_every_variable_the_production_settings_read_is_documented():
    read = {name for path in PRODUCTION_SETTINGS for name in _ENV_READ.findall(path.read_text())}
    assert not read - _documented_env(), "document them in .env.example"


def test_every_documented_variable_has_a_comment_line():
    lines = [line.strip() for line in ENV_EXAMPLE.read_text().splitlines()]
    for previous, line in zip(lines, lines[1:], strict=False):
        if _ENV_LINE.match(line):
            assert previous.startswith("#") and not _ENV_LINE.match(previous), line


def test_the_env_example_holds_no_real_looking_secret():
    for name, value in read_env_file(ENV_EXAMPLE).items():
        if re.search(r"SECRET|PASSWORD|TOKEN|_KEY$|AUTH", name):
            assert "change-me" in value, f"{name} must be a change-me placeholder"
        password = re.match(r"^\w+://[^:/@]+:([^@]+)@", value)
        if password:
            assert "change-me" in password.group(1), f"{name} must hold a placeholder password"
        # A random token: a long run of letters and digits mixing case and digits.
        for run in re.findall(r"[A-Za-z0-9_+/=-]{24,}", value):
            assert not (
                re.search(r"\d", run) and re.search(r"[a-z]", run) and re.search(r"[A-Z]", run)
            ), f"{name} looks like a real secret"


def test_the_image_is_slim_non_root_and_keeps_no_build_secret():
    dockerfile = DOCKERFILE.read_text()
    instructions = [
        line.strip()
        for line in dockerfile.replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert instructions[0] == "FROM python:3.11-slim"
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert "EXPOSE 8000" in instructions
    assert any("collectstatic" in line for line in instructions)
    assert re.search(r"flower==(\d+\.)+\d+|FLOWER_VERSION=(\d+\.)+\d+", dockerfile)
    # The build-time key lives inside one RUN only: never in ENV or ARG (image metadata).
    for line in instructions:
        if line.startswith(("ENV ", "ARG ")):
            assert "SECRET_KEY" not in line, line
    # torch comes with the pinned dependencies (pyproject.toml), never a floating install.
    assert "torch" not in " ".join(instructions).lower()
    assert '"torch==2.13.0"' in (ROOT / "pyproject.toml").read_text()
