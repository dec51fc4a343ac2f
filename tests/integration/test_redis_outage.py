"""The event log's lean Redis link across a Redis restart: a clear error while down, back by itself after."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from events import RegisterChallenged, StreamNames, default_codec, stamp
from runtime.consumer import Consumer
from runtime.errors import StoreUnavailable
from runtime.eventlog import EventLog
from runtime.handling import Delivery, Outcome
from runtime.resp import LinkSettings
from runtime.settings import EventLogSettings
from tests.conftest import free_port

REDIS_SERVER = shutil.which("redis-server")


class OwnRedis:
    """A redis-server of this test's own on an ephemeral port (never the shared one)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    if REDIS_SERVER is None:
        pytest.fail("redis-server is not installed; .ci/run installs it")
    server = OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def until_up(port: int) -> None:
    client = Redis(host="127.0.0.1", port=port)
    try:
        for _ in range(100):
            try:
                await client.ping()
                return
            except RedisConnectionError:
                await asyncio.sleep(0.05)
        raise TimeoutError("redis did not start")
    finally:
        await client.aclose()


def own_eventlog(port: int, cluster_id: str, **settings: int) -> tuple[Redis, StreamNames, EventLog]:
    """A client, the stream names and an event log (with its lean link) on this test's own Redis."""
    redis = Redis(host="127.0.0.1", port=port)
    names = StreamNames(cluster_id)
    log = EventLog(
        redis,
        default_codec(),
        names,
        EventLogSettings(cluster_id=cluster_id, **settings),
        LinkSettings("127.0.0.1", port),
    )
    return redis, names, log


def challenged(i: int) -> RegisterChallenged:
    return RegisterChallenged(
        **stamp(), aor=f"u{i}@x", realm="x", nonce="n", source_ip="1.1.1.1", source_port=i, call_id=f"c{i}"
    )


async def test_appends_fail_clearly_while_redis_is_down_and_recover_after(own_redis: OwnRedis) -> None:
    await until_up(own_redis.port)
    redis, names, log = own_eventlog(own_redis.port, "outage", block_ms=50, claim_idle_ms=200)
    try:
        assert len(await log.append(names.requests, [challenged(1)])) == 1
        own_redis.stop()
        with pytest.raises(StoreUnavailable):
            await log.append(names.requests, [challenged(2)])
        own_redis.start()
        await until_up(own_redis.port)
        assert len(await log.append(names.requests, [challenged(3)])) == 1  # reconnected by itself

        seen: list[str] = []

        class Record:
            async def handle(self, deliveries: list[Delivery]) -> list[Outcome]:
                seen.extend(d.event.aor for d in deliveries)  # type: ignore[attr-defined]
                return [Outcome() for _ in deliveries]

        await log.ensure_group(names.requests, "g")
        consumer = Consumer(log, names.requests, "g", Record())
        task = asyncio.create_task(consumer.run())
        await log.append(names.requests, [challenged(4)])
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.05)
        own_redis.stop()  # the consumer backs off and keeps trying ...
        await asyncio.sleep(0.3)
        own_redis.start()
        await until_up(own_redis.port)
        await log.append(names.requests, [challenged(5)])
        for _ in range(200):
            if "u5@x" in seen:
                break
            await asyncio.sleep(0.05)
        consumer.stop()
        await asyncio.wait_for(task, 5)
        # ... and carries on once Redis is back, creating its group again (that Redis kept no data)
        assert "u4@x" in seen and "u5@x" in seen
    finally:
        log.close()
        await redis.aclose()


async def test_a_commit_never_applies_partly_when_redis_forgot_its_scripts(own_redis: OwnRedis) -> None:
    from runtime.redis_scripts import Script

    await until_up(own_redis.port)
    redis, _, log = own_eventlog(own_redis.port, "scripts")
    script = Script("test-incr", "return redis.call('INCRBY', KEYS[1], ARGV[1])")
    try:
        await log.commit([script.command(("n",), (2,)), ("SET", "acked", "1")], [script])
        await redis.execute_command("SCRIPT", "FLUSH")  # the same connection, a Redis that forgot
        await log.commit([script.command(("n",), (3,)), ("SET", "acked", "2")], [script])
        assert int(await redis.get("n")) == 5 and await redis.get("acked") == b"2"
    finally:
        log.close()
        await redis.aclose()


class Answered:
    """An IncomingRequest that keeps what it was answered."""

    def __init__(self, message: object) -> None:
        from ingest.fronts.front import TransportFacts

        self.message = message
        self.facts = TransportFacts("10.0.0.9", 5062, "udp", "10.0.0.1:5060")
        self.answers: list[tuple[int, str, list[tuple[str, str]]]] = []

    async def respond(self, status: int, reason: str, headers: object = (), body: bytes = b"") -> None:
        self.answers.append((status, reason, list(headers)))  # type: ignore[call-overload]


async def test_a_request_that_cannot_be_recorded_is_answered_500_and_nothing_waits_for_it(own_redis: OwnRedis) -> None:
    from ingest.replies import ReplyRouter
    from ingest.service import Ingest
    from ingest.sip import parse_message
    from runtime.eventlog import Appender
    from tests.unit import sip_samples as samples

    await until_up(own_redis.port)
    redis, names, log = own_eventlog(own_redis.port, "unrecorded")
    replies = ReplyRouter(redis, log.blocking_reader(), default_codec(), names.replies("i1"))
    ingest = Ingest(Appender(log), replies, names.requests, "i1", reply_timeout_s=5)
    try:
        own_redis.stop()
        request = Answered(parse_message(samples.SIPP_REGISTER))
        started = time.monotonic()
        # The append is sent again while Redis may come back (Appender.RETRY_AFTER_S), then answered: before the
        # reply timeout, and as the store's fault, not as a decision that never came.
        await asyncio.wait_for(ingest(request), 5)
        assert sum(Appender.RETRY_AFTER_S) <= time.monotonic() - started < 5
        assert request.answers == [(500, "Server Internal Error", [("X-Reason", "event log unavailable")])]
        assert ingest.stats.store_failures == 1 and ingest.stats.registers == 1
        assert replies.waiting == 0
    finally:
        log.close()
        await redis.aclose()
