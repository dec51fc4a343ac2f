"""The CLI of a first run, against the real Redis and MariaDB: `db init` in one line, the demo tenant, the
environment file, Redis-only commands, `history` AOR forms and `events tail` order and filters."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiomysql
import pytest
from redis.asyncio import Redis

from events import RegisterChallenged, RegisterRejected, ServerCheckedIn, StreamNames, stamp
from projections.history import summarize
from runtime.envfile import parse_env_file
from runtime.eventlog import EventLog
from tests.conftest import (
    MYSQL_HOST,
    MYSQL_PASSWORD,
    MYSQL_PORT,
    MYSQL_USER,
    REDIS_DB,
    REDIS_HOST,
    REDIS_PORT,
    base_env,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO_AOR = "demo@sip.demo.local"


def sidecar(args: list[str], env: dict[str, str], *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd or ROOT,
    )


def redis_only_env(cluster_id: str) -> dict[str, str]:
    """What history, events and replay need, and nothing else: no MySQL, no secret."""
    return {
        "JAMBONES_REDIS_HOST": REDIS_HOST,
        "JAMBONES_REDIS_PORT": str(REDIS_PORT),
        "SIDECAR_REDIS_DB": str(REDIS_DB),
        "JAMBONES_CLUSTER_ID": cluster_id,
    }


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """The name of a database that does not exist yet; dropped afterwards."""
    name = f"sbc_first_{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        connection = await aiomysql.connect(
            host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD, autocommit=True
        )
        try:
            async with connection.cursor() as cursor:
                await cursor.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (name,))
                if await cursor.fetchone():  # a test that failed early made none, and IF EXISTS would warn
                    await cursor.execute(f"DROP DATABASE `{name}`")
        finally:
            connection.close()


async def query(database: str, sql: str) -> tuple[tuple[object, ...], ...]:
    connection = await aiomysql.connect(
        host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD, db=database, autocommit=True
    )
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(sql)
            return tuple(await cursor.fetchall())
    finally:
        connection.close()


async def db_init(env: dict[str, str], *extra: str) -> str:
    result = await asyncio.to_thread(sidecar, ["db", "init", *extra], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""  # no MySQL warnings, no tracebacks
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return lines[0]


async def test_db_init_says_in_one_line_what_it_created(cluster_id: str, database: str) -> None:
    env = base_env(cluster_id, database)
    where = f"{database} on {MYSQL_HOST}:{MYSQL_PORT}"
    assert await db_init(env) == f"db init: {where}: database created with 12 tables"
    assert await db_init(env) == f"db init: {where}: schema up to date"
    await query(database, "DROP TABLE sbc_addresses")
    await query(database, "DROP TABLE products")
    assert await db_init(env) == f"db init: {where}: created tables sbc_addresses, products"
    assert await db_init(env) == f"db init: {where}: schema up to date"


async def test_the_demo_account_is_checked_by_the_clients_table_and_an_old_demo_is_brought_to_it(
    cluster_id: str, database: str
) -> None:
    env = base_env(cluster_id, database)
    demo = "demo account sip.demo.local"
    # An older demo: a registration webhook that nothing serves, its client encrypted under another secret.
    line = await db_init({**env, "ENCRYPTION_SECRET": "older"}, "--demo", "--webhook-url", "http://127.0.0.1:4000/auth")
    assert line.endswith(
        f"; {demo} created, client added (user demo / demo-password, checked by the webhook http://127.0.0.1:4000/auth)"
    )
    assert len(await query(database, "SELECT * FROM accounts WHERE registration_hook_sid IS NOT NULL")) == 1

    line = await db_init(env, "--demo")
    assert line.endswith(
        f"schema up to date; {demo} webhook removed, client password reset "
        "(user demo / demo-password, checked by the clients table)"
    )
    assert await query(database, "SELECT registration_hook_sid FROM accounts") == ((None,),)
    assert await query(database, "SELECT COUNT(*) FROM webhooks") == ((0,),)
    [(stored,)] = await query(database, "SELECT password FROM clients WHERE username = 'demo'")
    from processors.registrar.client_password import ClientPasswordCipher

    assert ClientPasswordCipher(env["ENCRYPTION_SECRET"]).decrypt(str(stored)) == "demo-password"

    line = await db_init(env, "--demo")
    assert line.endswith(f"{demo} up to date (user demo / demo-password, checked by the clients table)")
    assert await query(database, "SELECT COUNT(*) FROM accounts") == ((1,),)
    assert await query(database, "SELECT COUNT(*) FROM clients") == ((1,),)


async def test_db_init_demo_names_the_missing_encryption_secret(cluster_id: str, database: str) -> None:
    env = {k: v for k, v in base_env(cluster_id, database).items() if k != "ENCRYPTION_SECRET"}
    result = await asyncio.to_thread(sidecar, ["db", "init", "--demo"], env)
    assert result.returncode == 2
    assert "ENCRYPTION_SECRET is required with --demo" in result.stderr


async def seed_history(redis: Redis, names: StreamNames, aor: str) -> None:
    """Two steps of one AOR's story, as the history projection keeps them."""
    challenged = RegisterChallenged(
        **stamp(), aor=aor, realm="sip.demo.local", nonce="n", source_ip="10.0.0.7", source_port=5060, call_id="c1"
    )
    rejected = RegisterRejected(
        **stamp(),
        aor=aor,
        status=403,
        reason="Forbidden",
        cause="no such client",
        x_reason="Invalid credentials",
        source_ip="10.0.0.7",
        source_port=5060,
        call_id="c1",
        account_sid="demo-account",  # (a rejection before any account is junk: counted, not told)
    )
    for number, event in enumerate((challenged, rejected)):
        step = summarize(f"{number + 1}-0", event)
        await redis.rpush(names.history(aor), json.dumps({**step, "t": int(event.occurred_at.timestamp() * 1000)}))


@pytest.mark.parametrize(
    "written",
    [DEMO_AOR, f"sip:{DEMO_AOR}", f"sips:{DEMO_AOR}", f"<sip:{DEMO_AOR}>", f'"Demo" <sip:{DEMO_AOR};transport=tcp>'],
)
async def test_history_reads_redis_only_and_takes_the_aor_as_users_write_it(
    cluster_id: str, redis: Redis, names: StreamNames, written: str
) -> None:
    await seed_history(redis, names, DEMO_AOR)
    result = await asyncio.to_thread(sidecar, ["history", written], redis_only_env(cluster_id))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("401 Unauthorized: challenged")
    assert lines[1].endswith("403 Forbidden: no such client")


async def test_history_refuses_what_is_no_aor_with_exit_2(cluster_id: str) -> None:
    result = await asyncio.to_thread(sidecar, ["history", "sip.demo.local"], redis_only_env(cluster_id))
    assert result.returncode == 2
    assert "is not an address of record; write user@host, sip:user@host" in result.stderr


def run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


async def test_the_settings_file_serves_every_shell(
    cluster_id: str, redis: Redis, names: StreamNames, tmp_path: Path
) -> None:
    """scripts/write-env.sh writes what serve.sh ran with; scripts/sidecar and --env-file read it from anywhere."""
    await seed_history(redis, names, DEMO_AOR)
    env_file = tmp_path / "sidecar.env"
    path = os.environ.get("PATH", "/usr/bin:/bin")
    settings = {
        **redis_only_env(cluster_id),
        "ENCRYPTION_SECRET": 'it\'s $HOME `quoted` "twice"',
        "JAMBONES_MYSQL_PASSWORD": "",
    }
    writer = [str(ROOT / "scripts" / "write-env.sh"), str(env_file)]
    written = await asyncio.to_thread(run, writer, {**settings, "UNRELATED": "left out", "PATH": path}, tmp_path)
    assert written.returncode == 0, written.stderr
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert parse_env_file(env_file.read_text()) == settings
    source = ["bash", "-c", f'source "{env_file}" && printf %s "$ENCRYPTION_SECRET"']
    sourced = await asyncio.to_thread(run, source, {"PATH": path}, tmp_path)
    assert sourced.stdout == settings["ENCRYPTION_SECRET"]

    bare = {"PATH": path, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}  # a new shell: none of the settings
    wrapper = [str(ROOT / "scripts" / "sidecar"), "history", f"sip:{DEMO_AOR}"]
    option = [sys.executable, "-m", "runtime.cli", "--env-file", str(env_file), "history", DEMO_AOR]
    for command, env in [(wrapper, {**bare, "SIDECAR_ENV_FILE": str(env_file)}), (option, bare)]:
        result = await asyncio.to_thread(run, command, env, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "403 Forbidden: no such client" in result.stdout

    without = await asyncio.to_thread(run, [sys.executable, "-m", "runtime.cli", "history", DEMO_AOR], bare, tmp_path)
    assert without.returncode == 2
    assert "JAMBONES_REDIS_HOST is required" in without.stderr


async def test_replay_and_events_tail_need_redis_only(cluster_id: str, redis: Redis, names: StreamNames) -> None:
    env = redis_only_env(cluster_id)
    replayed = await asyncio.to_thread(sidecar, ["replay", "registrations"], env)
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith("replayed 0 bindings of the snapshot and 0 registration events")
    tail = await asyncio.to_thread(sidecar, ["events", "tail", "--limit", "0"], env)
    assert tail.returncode == 0, tail.stderr


def heartbeat(number: int) -> ServerCheckedIn:
    return ServerCheckedIn(**stamp(), kind="fs", member=f"10.0.1.{number}:5060", ip=f"10.0.1.{number}", port=5060)


def challenge(aor: str) -> RegisterChallenged:
    return RegisterChallenged(
        **stamp(), aor=aor, realm="sip.demo.local", nonce="n", source_ip="10.0.0.7", source_port=5060, call_id="c"
    )


async def tail(cluster_id: str, *args: str) -> list[str]:
    result = await asyncio.to_thread(sidecar, ["events", "tail", *args], redis_only_env(cluster_id))
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


async def test_events_tail_from_start_merges_the_streams_in_time_order_and_filters(
    cluster_id: str, eventlog: EventLog, names: StreamNames
) -> None:
    ids = []
    for number in range(3):  # registrations and servers interleaved, one append at a time
        ids += await eventlog.append(names.registrations, [challenge(f"u{number}@sip.demo.local")])
        ids += await eventlog.append(names.servers, [heartbeat(number)])
    await asyncio.sleep(0.005)  # the next appends get a later millisecond: --since can fall between
    later = await eventlog.append(names.registrations, [challenge(DEMO_AOR)])
    later += await eventlog.append(names.servers, [heartbeat(9)])

    lines = await tail(cluster_id, "--from-start", "--limit", "8")
    assert [line.split()[0] for line in lines] == ids + later
    # Each entry under its own stream (two streams may give one id to entries of the same millisecond, which
    # then come in either order).
    expected = [(entry_id, "registrations" if n % 2 == 0 else "servers") for n, entry_id in enumerate(ids + later)]
    assert sorted((line.split()[0], line.split()[1]) for line in lines) == sorted(expected)

    by_aor = await tail(cluster_id, "--from-start", "--aor", f"<sip:{DEMO_AOR}>", "--limit", "1")
    assert by_aor[0].startswith(f"{later[0]} registrations ") and f"aor={DEMO_AOR}" in by_aor[0]

    by_type = await tail(cluster_id, "--from-start", "--type", "serverCheckedIn", "--limit", "4")
    assert [line.split()[0] for line in by_type] == ids[1::2] + [later[1]]

    since_ms = int(later[0].split("-")[0])
    since = datetime.fromtimestamp(since_ms / 1000, UTC).isoformat(timespec="milliseconds")
    recent = await tail(cluster_id, "--since", since, "--limit", "2")
    assert [line.split()[0] for line in recent] == later


async def test_events_tail_refuses_an_unknown_type_with_exit_2(cluster_id: str) -> None:
    result = await asyncio.to_thread(sidecar, ["events", "tail", "--type", "Registered"], redis_only_env(cluster_id))
    assert result.returncode == 2
    assert "'Registered' is no event type" in result.stderr
