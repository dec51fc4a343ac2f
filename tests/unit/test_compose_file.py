"""docker-compose.yml brings up the demo: checked by `docker compose config` where the plugin exists, and always
by reading the file as Compose would and holding its services to what the demo needs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from runtime.database import mysql_settings_from_env
from runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
PORT = re.compile(r"(?:(?P<ip>[\d.]+):)?(?P<host>\d+):(?P<container>\d+)(?:/(?P<protocol>udp|tcp))?")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def has_compose_plugin() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    return subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not has_compose_plugin(), reason="no docker compose plugin here; the checks below still run")
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()


def test_every_service_is_runnable_and_every_reference_resolves(compose: dict[str, Any]) -> None:
    assert set(compose) <= {"services", "volumes", "networks", "configs", "secrets", "name"} | {
        key for key in compose if key.startswith("x-")
    }
    services: dict[str, dict[str, Any]] = compose["services"]
    volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dependency, how in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert how["condition"] in CONDITIONS, name
            if how["condition"] == "service_healthy":
                assert services[dependency]["healthcheck"]["test"], f"{dependency} has no healthcheck"
        for mount in service.get("volumes") or []:
            source = mount.split(":")[0]
            assert source.startswith((".", "/")) or source in volumes, f"{name} mounts undeclared volume {source}"
        for port in service.get("ports") or []:
            assert PORT.fullmatch(port), f"{name}: bad port {port!r}"
        assert all(isinstance(value, str) for value in (service.get("environment") or {}).values()), name


def test_the_schema_and_demo_rows_are_made_before_the_sidecar_starts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    init, sidecar = services["db-init"], services["sidecar"]
    assert init["command"] == ["db", "init", "--demo"]
    assert 'ENTRYPOINT ["sbc-sidecar"]' in (ROOT / "Dockerfile").read_text()
    assert init["depends_on"]["mysql"]["condition"] == "service_healthy"
    assert sidecar["depends_on"]["db-init"]["condition"] == "service_completed_successfully"
    assert init.get("restart", "no") == "no"  # a one-shot: done once it exits 0
    # The demo password is encrypted by db-init and read by the sidecar: one secret, one database.
    assert init["environment"] == sidecar["environment"]


def test_the_settings_are_complete_and_the_sip_ports_are_published(compose: dict[str, Any]) -> None:
    sidecar = compose["services"]["sidecar"]
    env = sidecar["environment"]
    settings = Settings.from_env(env)  # raises ConfigError naming anything missing or bad
    assert mysql_settings_from_env(env).host == "mysql" and settings.redis.host == "redis"
    assert settings.sip.front == "native"
    published = {(m["container"], m["protocol"] or "tcp") for m in map(PORT.fullmatch, sidecar["ports"]) if m}
    for listener in settings.sip.listen:
        assert listener.host == "0.0.0.0"  # reachable through the published port
        assert (str(listener.port), listener.transport) in published
    assert (str(settings.http_listen[1]), "tcp") in published
    database = compose["services"]["mysql"]["environment"]["MARIADB_DATABASE"]
    assert env["JAMBONES_MYSQL_DATABASE"] == database
