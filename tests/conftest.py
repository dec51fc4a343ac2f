"""Fixtures shared by every test level: real Redis and MariaDB on loopback, isolated per test."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from runtime.compiled import stale_modules

if TYPE_CHECKING:
    from bench.rediscluster import LocalCluster

if stale_modules():  # checked before any test imports them: an old build would shadow the edited source
    STALE = ", ".join(stale_modules())
    pytest.exit(f"compiled modules not built from the source beside them: {STALE}; run scripts/compile.py", 4)

from events import StreamNames, default_codec  # noqa: E402
from runtime.eventlog import EventLog  # noqa: E402
from runtime.resp import LinkSettings  # noqa: E402
from runtime.settings import EventLogSettings  # noqa: E402

REDIS_HOST = os.environ.get("TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("TEST_REDIS_PORT", "6379"))
# Tests keep to their own Redis database so the jambonz keys they write (user:*, active-user)
# never meet a real deployment's; each test also has its own cluster id, and cleans up.
REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "9"))
MYSQL_HOST = os.environ.get("TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("TEST_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("TEST_MYSQL_USER", "root")
MYSQL_PASSWORD = os.environ.get("TEST_MYSQL_PASSWORD", "")
SCHEMA_SQL = Path(__file__).resolve().parents[1] / "runtime" / "schema.sql"


@pytest.fixture
def cluster_id() -> str:
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
async def redis(cluster_id: str) -> AsyncIterator[Redis]:
    client = Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    try:
        yield client
    finally:
        keys = [key async for key in client.scan_iter(match=f"{cluster_id}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
def names(cluster_id: str) -> StreamNames:
    return StreamNames(cluster_id=cluster_id)


@pytest.fixture
def eventlog_settings(cluster_id: str) -> EventLogSettings:
    return EventLogSettings(cluster_id=cluster_id, batch_size=50, block_ms=20, claim_idle_ms=200, max_deliveries=3)


@pytest.fixture
def eventlog(redis: Redis, names: StreamNames, eventlog_settings: EventLogSettings) -> Iterator[EventLog]:
    log = EventLog(redis, default_codec(), names, eventlog_settings, LinkSettings(REDIS_HOST, REDIS_PORT, REDIS_DB))
    yield log
    log.close()


@pytest.fixture
async def mysql_db() -> AsyncIterator[str]:
    """A fresh MariaDB database with the jambonz schema; dropped afterwards."""
    import aiomysql

    from runtime.database import schema_statements

    name = f"sbc_test_{secrets.token_hex(4)}"
    connection = await aiomysql.connect(
        host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD, autocommit=True
    )
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(f"CREATE DATABASE `{name}`")
            await cursor.execute(f"USE `{name}`")
            for statement in schema_statements():
                await cursor.execute(statement)
        yield name
    finally:
        async with connection.cursor() as cursor:
            await cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        connection.close()


def free_port(kind: str = "tcp") -> int:
    """A port free on 127.0.0.1 for both TCP and UDP at the time of asking."""
    import socket

    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def base_env(cluster_id: str, database: str) -> dict[str, str]:
    """The environment of a sidecar under test: real Redis (test DB) and MariaDB on loopback."""
    return {
        "JAMBONES_MYSQL_HOST": MYSQL_HOST,
        "JAMBONES_MYSQL_PORT": str(MYSQL_PORT),
        "JAMBONES_MYSQL_USER": MYSQL_USER,
        "JAMBONES_MYSQL_PASSWORD": MYSQL_PASSWORD,
        "JAMBONES_MYSQL_DATABASE": database,
        "JAMBONES_REDIS_HOST": REDIS_HOST,
        "JAMBONES_REDIS_PORT": str(REDIS_PORT),
        "SIDECAR_REDIS_DB": str(REDIS_DB),
        "JAMBONES_CLUSTER_ID": cluster_id,
        "ENCRYPTION_SECRET": "test-encryption-secret",
        "JAMBONES_LOGLEVEL": "info",
        "SBC_SOCKET_PATH": f"/tmp/sbc-sidecar-test-{cluster_id}.sock",
    }


def sidecar_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`sbc-sidecar <args>` in its own process, with the given settings on top of this environment."""
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args],
        env={**os.environ, **env},
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real local Redis Cluster of three masters (bench/rediscluster.py), shared by the tests that need one."""
    from bench.rediscluster import start_cluster

    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()
