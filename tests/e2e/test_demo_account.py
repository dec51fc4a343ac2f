"""The README's demo, end to end: `db init --demo`, then demo / demo-password registers (401, 200) with sipp over
the native front, a wrong password is refused with its X-Reason, and `history` tells it from Redis alone."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from events import StreamNames
from tests.conftest import REDIS_DB, REDIS_HOST, REDIS_PORT, base_env
from tests.e2e.conftest import PROJECTION_WAIT_S, Sidecar, projected, start_sidecar, stop_sidecar
from tests.e2e.test_register import header_values, register, responses

DEMO_AOR = "demo@sip.demo.local"

pytestmark = pytest.mark.sipp


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], env=full_env, capture_output=True, text=True)


async def forget_demo(redis: Redis) -> None:
    await redis.delete(f"user:{DEMO_AOR}")
    await redis.zrem("active-user", f"user:{DEMO_AOR}")


@pytest.fixture
async def demo(cluster_id: str, mysql_db: str, redis: Redis) -> AsyncIterator[Sidecar]:
    """The sidecar on a database that `db init --demo` made ready, as serve.sh does."""
    initialised = await asyncio.to_thread(cli, ["db", "init", "--demo"], base_env(cluster_id, mysql_db))
    assert initialised.returncode == 0, initialised.stdout + initialised.stderr
    await forget_demo(redis)
    running = await start_sidecar(cluster_id, mysql_db)
    try:
        yield running
    finally:
        await stop_sidecar(running)
        await forget_demo(redis)


async def story(redis: Redis, names: StreamNames, steps: int) -> None:
    """Waits until the history projection holds this many steps of the demo AOR."""
    deadline = asyncio.get_running_loop().time() + PROJECTION_WAIT_S
    while await redis.llen(names.history(DEMO_AOR)) < steps:
        assert asyncio.get_running_loop().time() < deadline, "the history projection never caught up"
        await asyncio.sleep(0.02)


async def test_the_demo_credentials_register_and_history_tells_it(
    demo: Sidecar, redis: Redis, names: StreamNames, cluster_id: str
) -> None:
    refused = await register(demo, "demo", "not-the-password", final=403, domain="sip.demo.local")
    assert refused.returncode == 0, refused.stderr
    assert responses(refused.messages) == ["SIP/2.0 401 Unauthorized", "SIP/2.0 403 Forbidden"]
    assert header_values(refused.messages, "X-Reason") == ["Invalid credentials"]

    granted = await register(demo, "demo", "demo-password", domain="sip.demo.local")
    assert granted.returncode == 0, granted.stderr
    assert responses(granted.messages) == ["SIP/2.0 401 Unauthorized", "SIP/2.0 200 OK"]
    assert await projected(redis, f"user:{DEMO_AOR}") is not None

    await story(redis, names, 4)  # members: each decision holds the REGISTER it answered
    redis_only = {
        "JAMBONES_REDIS_HOST": REDIS_HOST,
        "JAMBONES_REDIS_PORT": str(REDIS_PORT),
        "SIDECAR_REDIS_DB": str(REDIS_DB),
        "JAMBONES_CLUSTER_ID": cluster_id,
    }
    told = await asyncio.to_thread(cli, ["history", f"sip:{DEMO_AOR}"], redis_only)
    assert told.returncode == 0, told.stderr
    lines = told.stdout.splitlines()
    assert [line.split("  ", 1)[1].split(":")[0] for line in lines[1::2]] == [
        "401 Unauthorized",
        "403 Forbidden",
        "401 Unauthorized",
        "200 OK",
    ]
    assert "with credentials of demo" in lines[-2]
