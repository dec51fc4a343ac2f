"""What the bench stands on: Redis and MariaDB (started by scripts/services.sh where not answering),
a fresh MySQL database with one account and its registration webhook, and a clean Redis database.

Nothing here touches data it did not make: the bench database has its own name per run and is
dropped at the end; in Redis only the run's cluster keys and the bench realm's jambonz keys are
deleted; a server is shut down at the end only when this run started it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiomysql
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from bench.digest import REALM
from bench.records import ACTIVE_USER_KEY

if TYPE_CHECKING:
    from bench.rediscluster import LocalCluster

REPO = Path(__file__).resolve().parents[1]
REDIS_HOST = os.environ.get("BENCH_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
MYSQL_HOST = os.environ.get("BENCH_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("BENCH_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("BENCH_MYSQL_USER", "root")
MYSQL_PASSWORD = os.environ.get("BENCH_MYSQL_PASSWORD", "")


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP when asked (never 5060: the kernel's
    ephemeral range starts far above it)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            if port != 5060:
                return port
    raise RuntimeError("no free port on 127.0.0.1")


@dataclass
class Servers:
    """Redis and MariaDB on loopback; remembers which of them this run started."""

    started: list[str] = field(default_factory=list)

    async def ensure(self) -> None:
        before = {"redis": port_answers(REDIS_PORT, REDIS_HOST), "mariadb": port_answers(MYSQL_PORT, MYSQL_HOST)}
        if all(before.values()) and _have_sipp():
            return
        process = await asyncio.create_subprocess_exec(
            "bash",
            str(REPO / "scripts" / "services.sh"),
            "--no-influx",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"scripts/services.sh failed:\n{output.decode(errors='replace')}")
        self.started = [name for name, answered in before.items() if not answered]

    async def stop_started(self) -> None:
        """Stops the servers this run started (and only those)."""
        if "redis" in self.started:
            await _quiet("redis-cli", "-h", REDIS_HOST, "-p", str(REDIS_PORT), "shutdown", "nosave")
        if "mariadb" in self.started:
            await _quiet(
                "mariadb-admin",
                "-h",
                MYSQL_HOST,
                "-P",
                str(MYSQL_PORT),
                "-u",
                MYSQL_USER,
                *([f"-p{MYSQL_PASSWORD}"] if MYSQL_PASSWORD else []),
                "shutdown",
            )
        self.started = []


def _have_sipp() -> bool:
    from shutil import which

    return which("sipp") is not None


async def _quiet(*argv: str) -> None:
    process = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await process.wait()


@dataclass(frozen=True)
class Tenant:
    """The bench account: its realm, webhook row credentials and signing secret, the users' password."""

    webhook_user: str = "bench"
    webhook_password: str = field(default_factory=lambda: secrets.token_hex(8))
    webhook_secret: str = field(default_factory=lambda: secrets.token_hex(12))
    user_password: str = field(default_factory=lambda: secrets.token_hex(6))
    realm: str = REALM
    name: str = "bench"  # the account's and its service provider's name


class BenchDatabase:
    """A MySQL database of its own (`sbc_bench_<hex>`), made with `sbc-sidecar db init`, dropped at the end."""

    def __init__(self) -> None:
        self.name = f"sbc_bench_{secrets.token_hex(3)}"

    def env(self) -> dict[str, str]:
        return {
            "JAMBONES_MYSQL_HOST": MYSQL_HOST,
            "JAMBONES_MYSQL_PORT": str(MYSQL_PORT),
            "JAMBONES_MYSQL_USER": MYSQL_USER,
            "JAMBONES_MYSQL_PASSWORD": MYSQL_PASSWORD,
            "JAMBONES_MYSQL_DATABASE": self.name,
        }

    async def create(self, tenant: Tenant, webhook_url: str) -> None:
        """The schema, then `tenant`'s account."""
        await self.init_schema()
        await self.add_account(tenant, webhook_url)

    async def init_schema(self) -> None:
        process = await asyncio.create_subprocess_exec(
            str(REPO / ".venv" / "bin" / "sbc-sidecar"),
            "db",
            "init",
            env={**os.environ, **self.env()},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"sbc-sidecar db init failed:\n{output.decode(errors='replace')}")

    async def add_account(self, tenant: Tenant, webhook_url: str) -> None:
        """An account for `tenant` (its realm, signing secret), with a service provider of its own and
        its registration webhook row (Basic credentials) pointing at `webhook_url`."""
        connection = await self._connect(self.name)
        try:
            async with connection.cursor() as cursor:
                provider, hook, account = (str(uuid.uuid4()) for _ in range(3))
                await cursor.execute(
                    "INSERT INTO webhooks (webhook_sid, url, method, username, password) "
                    "VALUES (%s, %s, 'POST', %s, %s)",
                    (hook, webhook_url, tenant.webhook_user, tenant.webhook_password),
                )
                await cursor.execute(
                    "INSERT INTO service_providers (service_provider_sid, name) VALUES (%s, %s)",
                    (provider, tenant.name),
                )
                await cursor.execute(
                    "INSERT INTO accounts (account_sid, name, sip_realm, service_provider_sid, "
                    "registration_hook_sid, webhook_secret, is_active) VALUES (%s, %s, %s, %s, %s, %s, 1)",
                    (account, tenant.name, tenant.realm, provider, hook, tenant.webhook_secret),
                )
        finally:
            connection.close()

    async def count_rows(self, table: str) -> int | None:
        """Rows of `table` in the bench database; None when there is no such table."""
        connection = await self._connect(self.name)
        try:
            async with connection.cursor() as cursor:
                await cursor.execute(
                    "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
                    (self.name, table),
                )
                (exists,) = await cursor.fetchone()
                if not exists:
                    return None
                await cursor.execute(f"SELECT COUNT(*) FROM `{table}`")
                (rows,) = await cursor.fetchone()
                return int(rows)
        finally:
            connection.close()

    async def drop(self) -> None:
        connection = await self._connect(None)
        try:
            async with connection.cursor() as cursor:
                await cursor.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
        finally:
            connection.close()

    @staticmethod
    async def _connect(database: str | None) -> aiomysql.Connection:
        async with asyncio.timeout(10):
            return await aiomysql.connect(
                host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD, db=database, autocommit=True
            )


class BenchRedis:
    """The Redis database the service writes to in this run, and the keys the run leaves behind."""

    def __init__(self, db: int, cluster_id: str) -> None:
        self.db = db
        self.cluster_id = cluster_id
        self.client = Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)

    def env(self) -> dict[str, str]:
        return {
            "JAMBONES_REDIS_HOST": REDIS_HOST,
            "JAMBONES_REDIS_PORT": str(REDIS_PORT),
            "SIDECAR_REDIS_DB": str(self.db),
            "JAMBONES_CLUSTER_ID": self.cluster_id,
        }

    async def server_pids(self) -> list[int]:
        info = await self.client.info("server")
        pid = info.get("process_id")
        return [int(pid)] if pid is not None else []

    async def command_calls(self) -> dict[str, int]:
        """Calls per command since the server started (INFO commandstats; server-wide, all databases)."""
        stats = await self.client.info("commandstats")
        return {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if isinstance(value, dict) and "calls" in value
        }

    async def used_memory_bytes(self) -> int:
        return int((await self.client.info("memory"))["used_memory"])

    def new_client(self) -> Redis:
        """A client of its own (its own connections) to the run's database."""
        return Redis(host=REDIS_HOST, port=REDIS_PORT, db=self.db)

    async def clean(self, realms: Sequence[str] = (REALM,)) -> int:
        """Deletes the run's cluster keys and the realms' registrations; returns how many keys went."""
        deleted = 0
        for pattern in (f"{self.cluster_id}:*", *(f"user:*@{realm}" for realm in realms)):
            deleted += await self._unlink_matching(pattern)
        for realm in realms:
            members = [m async for m, _ in self.client.zscan_iter(ACTIVE_USER_KEY, match=f"user:*@{realm}", count=5000)]
            for start in range(0, len(members), 5000):
                await self.client.zrem(ACTIVE_USER_KEY, *members[start : start + 5000])
        return deleted

    async def _unlink_matching(self, pattern: str) -> int:
        deleted = 0
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=pattern, count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                deleted += await self.client.unlink(*batch)
                batch = []
        if batch:
            deleted += await self.client.unlink(*batch)
        return deleted

    async def close(self) -> None:
        await self.client.aclose()


class BenchRedisCluster(BenchRedis):
    """The run's local Redis Cluster of three masters (bench/rediscluster.py, started for the run), with
    SIDECAR_PARTITIONS=3: the service is pointed at one node, the readings add up every master."""

    def __init__(self, cluster: LocalCluster, cluster_id: str, partitions: int = 3) -> None:
        self.local = cluster
        self.db = 0
        self.cluster_id = cluster_id
        self.partitions = partitions
        self.client = self.new_client()
        self._nodes = [Redis(host="127.0.0.1", port=port) for port in cluster.ports]

    def env(self) -> dict[str, str]:
        return {
            "JAMBONES_REDIS_HOST": "127.0.0.1",
            "JAMBONES_REDIS_PORT": str(self.local.ports[0]),
            "SIDECAR_REDIS_DB": "0",
            "SIDECAR_PARTITIONS": str(self.partitions),
            "JAMBONES_CLUSTER_ID": self.cluster_id,
        }

    async def server_pids(self) -> list[int]:
        return [int((await node.info("server"))["process_id"]) for node in self._nodes]

    async def command_calls(self) -> dict[str, int]:
        calls: dict[str, int] = {}
        for node in self._nodes:
            for name, value in (await node.info("commandstats")).items():
                if isinstance(value, dict) and "calls" in value:
                    key = name.removeprefix("cmdstat_")
                    calls[key] = calls.get(key, 0) + int(value["calls"])
        return calls

    async def used_memory_bytes(self) -> int:
        return sum([int((await node.info("memory"))["used_memory"]) for node in self._nodes])

    def new_client(self) -> Redis:
        client = RedisCluster(host="127.0.0.1", port=self.local.ports[0])
        return client  # type: ignore[return-value]  # the same commands, each routed to its slot's master

    async def _unlink_matching(self, pattern: str) -> int:
        """The keys on every master, a key at a time (they are in many slots)."""
        deleted = 0
        for node in self._nodes:
            async for key in node.scan_iter(match=pattern, count=5000):
                deleted += await node.unlink(key)
        return deleted

    async def close(self) -> None:
        await self.client.aclose()
        for node in self._nodes:
            await node.aclose()
