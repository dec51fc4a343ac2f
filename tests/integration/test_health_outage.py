"""/health tells the truth (issue 14): 503 naming redis while the service's Redis is down, 200 again once it is
back; ?verbose lists each dependency's state and the consumer groups' lag."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.e2e.conftest import Sidecar, start_sidecar, stop_sidecar
from tests.integration.test_redis_outage import OwnRedis, own_redis, until_up

__all__ = ["own_redis"]  # the fixture, used by name


async def health(sidecar: Sidecar, query: str = "") -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(sidecar.health_url + query, timeout=aiohttp.ClientTimeout(total=5)) as response:
            return response.status, await response.json()


async def health_becomes(sidecar: Sidecar, status: int, timeout_s: float = 10.0) -> dict[str, object]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        code, body = await health(sidecar)
        if code == status:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"/health stayed {code} {body}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def sidecar_on_own_redis(cluster_id: str, mysql_db: str, own_redis: OwnRedis) -> AsyncIterator[Sidecar]:
    await until_up(own_redis.port)
    env = {"JAMBONES_REDIS_PORT": str(own_redis.port), "SIDECAR_REDIS_DB": "0"}
    running = await start_sidecar(cluster_id, mysql_db, env=env)
    try:
        yield running
    finally:
        await stop_sidecar(running)


async def test_health_is_503_naming_redis_while_it_is_down(sidecar_on_own_redis: Sidecar, own_redis: OwnRedis) -> None:
    sidecar = sidecar_on_own_redis
    code, body = await health(sidecar, "?verbose")
    assert code == 200 and body["status"] == "ok", body
    dependencies = body["dependencies"]
    assert isinstance(dependencies, dict) and set(dependencies) == {"redis", "mysql"}
    assert all(state["ok"] for state in dependencies.values())
    streams = body["streams"]
    assert isinstance(streams, dict) and streams["requests/processors"]["lag"] == 0
    assert body["dead_entries"] == 0

    own_redis.stop()
    down = await health_becomes(sidecar, 503)
    assert down == {"status": "unavailable", "failing": ["redis"]}
    code, verbose = await health(sidecar, "?verbose")
    assert code == 503 and verbose["dependencies"]["redis"]["ok"] is False  # type: ignore[index]
    assert verbose["dependencies"]["mysql"]["ok"] is True  # type: ignore[index]
    print("/health during the outage:", down, verbose["dependencies"], sep="\n  ")

    own_redis.start()
    await until_up(own_redis.port)
    assert await health_becomes(sidecar, 200) == {"status": "ok"}
