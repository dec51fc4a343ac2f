"""`sbc-sidecar db init` against a real MariaDB and `events tail` against the real Redis."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys

import aiomysql

from events import RegisterChallenged, StreamNames, stamp
from runtime.eventlog import EventLog
from tests.conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER, base_env

TABLES = {
    "accounts",
    "webhooks",
    "service_providers",
    "clients",
    "voip_carriers",
    "sip_gateways",
    "system_information",
    "sbc_addresses",
    "products",
    "account_products",
    "account_subscriptions",
    "sidecar_history",
}


def sidecar(args: list[str], env: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args], env=full_env, capture_output=True, text=True, timeout=timeout_s
    )


async def test_db_init_creates_the_schema_and_a_demo_tenant_idempotently(cluster_id: str) -> None:
    database = f"sbc_init_{secrets.token_hex(4)}"
    env = base_env(cluster_id, database)
    try:
        for _ in range(2):  # twice in a row: the second run changes nothing and still succeeds
            result = await asyncio.to_thread(sidecar, ["db", "init", "--demo"], env)
            assert result.returncode == 0, result.stdout + result.stderr
        connection = await aiomysql.connect(
            host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD, db=database, autocommit=True
        )
        try:
            async with connection.cursor() as cursor:
                await cursor.execute("SHOW TABLES")
                assert TABLES <= {row[0] for row in await cursor.fetchall()}
                await cursor.execute("SELECT COUNT(*) FROM accounts WHERE sip_realm = 'sip.demo.local' AND is_active")
                assert (await cursor.fetchone())[0] == 1
                await cursor.execute("SELECT COUNT(*) FROM webhooks")  # the clients table checks the demo user
                assert (await cursor.fetchone())[0] == 0
                await cursor.execute("SELECT username, password FROM clients")
                [(username, password)] = await cursor.fetchall()
                assert username == "demo" and '"iv"' in password and "demo-password" not in password
        finally:
            connection.close()
    finally:
        connection = await aiomysql.connect(
            host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD, autocommit=True
        )
        async with connection.cursor() as cursor:
            await cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")
        connection.close()


async def test_db_init_reports_an_unreachable_mysql(cluster_id: str) -> None:
    env = {**base_env(cluster_id, "x"), "JAMBONES_MYSQL_PORT": "1"}
    result = await asyncio.to_thread(sidecar, ["db", "init"], env)
    assert result.returncode == 1
    assert "cannot connect to MySQL" in result.stdout


async def test_events_tail_prints_one_line_per_event_without_secrets(
    cluster_id: str, mysql_db: str, eventlog: EventLog, names: StreamNames
) -> None:
    events = [
        RegisterChallenged(
            **stamp(),
            aor=f"u{i}@example.org",
            realm="example.org",
            nonce="n",
            source_ip="10.0.0.9",
            source_port=5060 + i,
            call_id=f"c{i}",
        )
        for i in range(3)
    ]
    await eventlog.append(names.registrations, events)
    result = await asyncio.to_thread(
        sidecar,
        ["events", "tail", "--from-start", "--stream", "registrations", "--limit", "3"],
        base_env(cluster_id, mysql_db),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert all(" registrations " in line and "RegisterChallenged" in line for line in lines)
    assert "aor=u0@example.org" in lines[0] and "source_port=5062" in lines[2]
