"""docker-compose.yml, the Procfile and the settings agree (no Docker engine here to run them)."""

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import yaml

ROOT = Path(__file__).resolve().parent.parent
APP_PROCESSES = ("web", "worker", "beat")


def procfile():
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_procfile_names_web_worker_and_beat():
    assert set(procfile()) == set(APP_PROCESSES)


def test_compose_runs_the_procfile_commands():
    services = compose()["services"]
    assert {"postgres", "redis", *APP_PROCESSES} <= set(services)
    for name, command in procfile().items():
        assert services[name]["command"] == command, name


def test_compose_waits_for_healthy_services():
    services = compose()["services"]
    for backing in ("postgres", "redis"):
        assert "healthcheck" in services[backing], backing
    for name in APP_PROCESSES:
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    assert "healthcheck" in services["web"] and "healthcheck" in services["worker"]


def test_compose_environment_points_at_its_own_services():
    services = compose()["services"]
    for name in APP_PROCESSES:
        env = services[name]["environment"]
        assert env["DJANGO_SETTINGS_MODULE"] == "tapproject.settings.production"
        assert urlparse(env["DATABASE_URL"]).hostname == "postgres"
        assert urlparse(env["CELERY_BROKER_URL"]).hostname == "redis"
        assert {"SECRET_KEY", "ALLOWED_HOSTS"} <= set(env)
    bind = services["web"]["environment"]["GUNICORN_BIND"]
    port = bind.rsplit(":", 1)[1]
    assert f"{port}:{port}" in services["web"]["ports"]
    assert port in services["web"]["healthcheck"]["test"][-1]


def _resolve(value, overrides):
    """Compose-style ${VAR:-default} / ${VAR:?msg} interpolation, with overrides for VAR."""
    def sub(match):
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if name in overrides:
            return overrides[name]
        if op == ":?":
            raise AssertionError(f"compose requires {name}: {rest}")
        return rest or ""
    return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", sub, str(value))


def test_compose_environment_passes_the_production_deploy_check(tmp_path):
    env = {k: _resolve(v, {"SECRET_KEY": "s" + "0aZ9bY8cX7dW6eV5fU4gT3hS2iR1jQ" * 2})
           for k, v in compose()["services"]["web"]["environment"].items()}
    env.update(PATH="/usr/bin:/bin", HOME="/tmp", TAP_VAR_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_compose_refuses_to_start_without_a_secret_key():
    env = compose()["services"]["web"]["environment"]
    assert env["SECRET_KEY"].startswith("${SECRET_KEY:?")


def test_dockerfile_installs_production_requirements_and_serves_gunicorn():
    text = (ROOT / "Dockerfile").read_text()
    assert "requirements/production.txt" in text
    assert "collectstatic" in text
    assert "gunicorn.conf.py" in text
    assert "USER tap" in text
