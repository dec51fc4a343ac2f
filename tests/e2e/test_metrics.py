"""Metrics of one registration end to end: jambonz's StatsD datagrams (SPEC 5.2) caught by a real UDP listener,
and the Prometheus exposition of /metrics read with prometheus_client's parser."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from tests.conftest import free_port
from tests.e2e.conftest import Sidecar, start_sidecar, stop_sidecar
from tests.e2e.jambonz import AuthWebhook, populate
from tests.e2e.test_register import clear_jambonz_keys, register


class StatsdListener(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[str] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams.append(data.decode())

    def lines(self) -> list[str]:
        return [line for datagram in self.datagrams for line in datagram.split("\n")]


@pytest.fixture
async def statsd() -> AsyncIterator[tuple[StatsdListener, int]]:
    port = free_port()
    transport, listener = await asyncio.get_running_loop().create_datagram_endpoint(
        StatsdListener, local_addr=("127.0.0.1", port)
    )
    try:
        yield listener, port
    finally:
        transport.close()


@pytest.fixture
async def metered(
    cluster_id: str, mysql_db: str, redis: Redis, webhook: AuthWebhook, statsd: tuple[StatsdListener, int]
) -> AsyncIterator[Sidecar]:
    await populate(mysql_db, webhook.url)
    await clear_jambonz_keys(redis)
    env = {
        "ENABLE_METRICS": "1",
        "STATS_HOST": "127.0.0.1",
        "STATS_PORT": str(statsd[1]),
        "STATS_TAGS": "sbc:test",
    }
    running = await start_sidecar(cluster_id, mysql_db, env=env)
    try:
        yield running
    finally:
        await stop_sidecar(running)
        await clear_jambonz_keys(redis)


async def scrape(sidecar: Sidecar) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{sidecar.http_port}/metrics") as response:
            assert response.status == 200
            return await response.text()


async def wait_for(listener: StatsdListener, prefix: str, count: int) -> list[str]:
    for _ in range(200):
        found = [line for line in listener.lines() if line.startswith(prefix)]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} x {prefix} never arrived; got {listener.lines()}")


async def test_one_registration_sends_jambonz_statsd_metrics(
    metered: Sidecar, statsd: tuple[StatsdListener, int]
) -> None:
    listener, _ = statsd
    result = await register(metered, "john", "1234")
    assert result.returncode == 0, result.stderr
    answers = await wait_for(listener, "sbc.registration.total.response_time:", 2)
    hooks = await wait_for(listener, "app.hook.response_time:", 1)
    # The 401 and the 200, each a histogram (ms) with its status; the global tag first, as hot-shots does.
    statuses = sorted(line.rsplit("status:", 1)[1] for line in answers)
    assert statuses == ["200", "401"], answers
    for line in answers:
        value, kind = line.split(":", 1)[1].split("|")[:2]
        assert kind == "h" and 0 <= float(value) < 5000
        assert line.endswith((",status:200", ",status:401")) and "|#sbc:test," in line
    assert len(hooks) == 1 and hooks[0].endswith("|h|#sbc:test,hook_type:auth,status:200"), hooks
    assert not [line for line in listener.lines() if line.startswith("sbc.registration.cached.")]
    print("statsd datagrams of one registration:", *listener.datagrams, sep="\n  ")


async def test_metrics_exposition_parses_with_the_prometheus_parser(metered: Sidecar) -> None:
    result = await register(metered, "john", "1234")
    assert result.returncode == 0, result.stderr
    text = await scrape(metered)
    families = {family.name: family for family in text_string_to_metric_families(text)}

    answers = families["sbc_sidecar_registration_answer_seconds"]
    assert answers.type == "histogram"
    counts = {
        (s.labels["status"], s.labels["path"]): s.value
        for s in answers.samples
        if s.name == "sbc_sidecar_registration_answer_seconds_count"
    }
    assert counts == {("401", "challenge"): 1.0, ("200", "webhook"): 1.0}

    webhook = families["sbc_sidecar_webhook_seconds"]
    assert [s.value for s in webhook.samples if s.name.endswith("_count") and s.labels["status"] == "200"] == [1.0]
    auth = families["sbc_sidecar_auth_seconds"]
    assert {(s.labels["path"], s.labels["status"]) for s in auth.samples if s.name.endswith("_count")} == {
        ("webhook", "200")
    }

    shed = families["sbc_sidecar_requests_shed"]
    assert shed.type == "counter" and shed.samples[0].name == "sbc_sidecar_requests_shed_total"
    assert shed.samples[0].value == 0

    lag = {(s.labels["stream"], s.labels["group"]): s.value for s in families["sbc_sidecar_stream_lag_entries"].samples}
    assert lag[("requests", "processors")] == 0
    pending = families["sbc_sidecar_stream_pending_entries"].samples
    assert {(s.labels["stream"], s.labels["group"]) for s in pending} >= {("requests", "processors")}
    assert families["sbc_sidecar_dead_entries"].samples[0].value == 0

    # The workers' counters keep their names (untyped lines), read by other tests and dashboards.
    assert families["sbc_sidecar_ingest_requests_registers"].samples[0].value == 2
    assert "sbc_sidecar_consumer_processors_claimed" in families
    excerpt = [
        line for line in text.splitlines() if "registration_answer_seconds_count" in line or "stream_lag" in line
    ]
    print("/metrics excerpt:", *excerpt, sep="\n  ")
