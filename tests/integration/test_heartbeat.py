"""The heartbeat processor and the server expiry against the real Redis (SPEC 3, SPEC 6 item 4)."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from events import (
    OptionsReceived,
    RegisterReceived,
    ReplyIssued,
    ServerCheckedIn,
    ServerExpired,
    ServerLeft,
    StreamNames,
    stamp,
)
from events.streams import GROUP_HEARTBEAT
from processors.heartbeat import Heartbeat, ServerExpiry
from projections.servers import writes_for
from runtime.consumer import Consumer
from runtime.eventlog import EventLog
from runtime.handling import Delivery, Outcome

INGEST = "ingest-t"
FS_URL = {"127.0.0.20": "http://127.0.0.1:3000", "127.0.0.21": "http://127.0.0.1:3001"}


def fs(ip: str, status: str = "open", port: int = 5060) -> OptionsReceived:
    return OptionsReceived(
        **stamp(),
        reply_to=INGEST,
        call_id=f"fs-{ip}",
        source_ip=ip,
        source_port=port,
        transport="udp",
        fs_status=status,
        fs_service_url=FS_URL.get(ip),
    )


def rtp(ip: str, status: str = "open") -> OptionsReceived:
    return OptionsReceived(
        **stamp(),
        reply_to=INGEST,
        call_id=f"rtp-{ip}",
        source_ip=ip,
        source_port=22222,
        transport="udp",
        rtp_status=status,
    )


def external(ip: str) -> OptionsReceived:
    return OptionsReceived(
        **stamp(), reply_to=INGEST, call_id=f"ext-{ip}", source_ip=ip, source_port=5060, transport="udp"
    )


def register() -> RegisterReceived:
    return RegisterReceived(
        **stamp(),
        reply_to=INGEST,
        call_id="reg",
        cseq=1,
        source_ip="127.0.0.30",
        source_port=5060,
        transport="udp",
        via_transport="udp",
        sbc_address="127.0.0.1:5060",
        request_uri="sip:example.com",
        request_uri_host="example.com",
        to_uri="sip:u@example.com",
        aor_user="u",
        aor_host="example.com",
        contact="<sip:u@127.0.0.30>",
        contact_uri="sip:u@127.0.0.30",
        expires=60,
    )


def heartbeat_consumer(eventlog: EventLog, name: str = "hb") -> Consumer:
    handler = Heartbeat(eventlog.redis, eventlog.names, time.time)
    return Consumer(eventlog, eventlog.names.requests, GROUP_HEARTBEAT, handler, name=name)


async def drain(consumer: Consumer) -> None:
    await consumer.log.ensure_group(consumer.stream, consumer.group)
    while await consumer.run_once():
        pass


async def replies(eventlog: EventLog) -> list[ReplyIssued]:
    out = [stored.event for stored in await eventlog.read(eventlog.names.replies(INGEST))]
    assert all(isinstance(e, ReplyIssued) for e in out)
    return out  # type: ignore[return-value]


def x_members(reply: ReplyIssued) -> str | None:
    return dict(reply.headers).get("X-Members")


async def smembers(redis: Redis, key: str) -> set[str]:
    return {m.decode() for m in await redis.smembers(key)}


async def sets(redis: Redis, names: StreamNames) -> tuple[set[str], set[str], set[str]]:
    return (
        await smembers(redis, names.active_fs),
        await smembers(redis, names.active_rtp),
        await smembers(redis, names.fs_service_url),
    )


A, B = "127.0.0.20", "127.0.0.21"
# SPEC 6 item 4: each step, its X-Members, and the three sets after it
# (active-fs, active-rtp, fs-service-url).
OPTIONS_SEQUENCE = [
    (fs(A), "1", ({f"{A}:5060"}, set(), {FS_URL[A]})),
    (rtp(A), "1", ({f"{A}:5060"}, {A}, {FS_URL[A]})),
    (fs(B), "2", ({f"{A}:5060", f"{B}:5060"}, {A}, {FS_URL[A], FS_URL[B]})),
    (fs(B), "2", ({f"{A}:5060", f"{B}:5060"}, {A}, {FS_URL[A], FS_URL[B]})),
    (rtp(B), "2", ({f"{A}:5060", f"{B}:5060"}, {A, B}, {FS_URL[A], FS_URL[B]})),
    (fs(A, "closed"), "1", ({f"{B}:5060"}, {A, B}, {FS_URL[B]})),
    (rtp(A, "closed"), "1", ({f"{B}:5060"}, {B}, {FS_URL[B]})),
    (fs(B, "closed"), "0", (set(), {B}, set())),
    (rtp(B, "closed"), "0", (set(), set(), set())),
    (external("127.0.0.22"), None, (set(), set(), set())),
    (fs(A), "1", ({f"{A}:5060"}, set(), {FS_URL[A]})),
]


async def test_options_sequence_one_at_a_time(eventlog: EventLog, names: StreamNames, redis: Redis):
    consumer = heartbeat_consumer(eventlog)
    for step, (event, expected, expected_sets) in enumerate(OPTIONS_SEQUENCE):
        await eventlog.append(names.requests, [event])
        await drain(consumer)
        answers = await replies(eventlog)
        assert len(answers) == step + 1
        reply = answers[-1]
        assert reply.status == 200, step
        assert reply.correlation_id == event.correlation_id
        assert x_members(reply) == expected, step
        assert await sets(redis, names) == expected_sets, step
    assert (await redis.xpending(names.requests, GROUP_HEARTBEAT))["pending"] == 0


async def test_options_sequence_in_one_batch_counts_each_change(eventlog: EventLog, names: StreamNames, redis: Redis):
    await eventlog.append(names.requests, [event for event, _, _ in OPTIONS_SEQUENCE])
    consumer = heartbeat_consumer(eventlog)
    await drain(consumer)
    assert consumer.stats.batches == 1
    expected = [members for _, members, _ in OPTIONS_SEQUENCE]
    assert [x_members(r) for r in await replies(eventlog)] == expected
    assert await sets(redis, names) == OPTIONS_SEQUENCE[-1][2]


async def test_facts_are_recorded_and_rebuild_the_sets(eventlog: EventLog, names: StreamNames, redis: Redis):
    await eventlog.append(names.requests, [event for event, _, _ in OPTIONS_SEQUENCE])
    await drain(heartbeat_consumer(eventlog))
    facts = [stored.event for stored in await eventlog.read(names.servers)]
    kinds = [type(f).__name__ for f in facts]
    assert kinds == ["ServerCheckedIn"] * 5 + ["ServerLeft"] * 4 + ["ServerCheckedIn"]
    first = facts[0]
    assert isinstance(first, ServerCheckedIn)
    assert (first.kind, first.member, first.ip, first.port, first.service_url) == (
        "fs",
        f"{A}:5060",
        A,
        5060,
        FS_URL[A],
    )
    assert first.correlation_id == OPTIONS_SEQUENCE[0][0].correlation_id
    # Replaying the facts into fresh keys gives the same sets.
    rebuilt = StreamNames(f"{names.cluster_id}:rebuilt")
    pipe = redis.pipeline(transaction=True)
    for fact in facts:
        for command in writes_for(fact, rebuilt):  # type: ignore[arg-type]
            pipe.execute_command(*command)
    await pipe.execute()
    assert await sets(redis, rebuilt) == await sets(redis, names)


async def test_register_requests_are_acked_without_output(eventlog: EventLog, names: StreamNames, redis: Redis):
    await eventlog.append(names.requests, [register(), fs(A), register()])
    consumer = heartbeat_consumer(eventlog)
    await drain(consumer)
    assert consumer.stats.committed == 3
    assert len(await replies(eventlog)) == 1
    assert await redis.xlen(names.servers) == 1
    assert (await redis.xpending(names.requests, GROUP_HEARTBEAT))["pending"] == 0


async def test_drained_feature_server_is_removed_at_its_next_open(eventlog: EventLog, names: StreamNames, redis: Redis):
    consumer = heartbeat_consumer(eventlog)
    await eventlog.append(names.requests, [fs(A), fs(B)])
    await drain(consumer)
    await redis.sadd(names.drained_fs, A)
    await eventlog.append(names.requests, [fs(A), rtp(A)])
    await drain(consumer)
    answers = await replies(eventlog)
    assert [x_members(r) for r in answers] == ["1", "2", "1", "1"]
    assert await smembers(redis, names.active_fs) == {f"{B}:5060"}
    assert await smembers(redis, names.active_rtp) == {A}  # the drain is for feature servers only
    assert await smembers(redis, names.fs_service_url) == {FS_URL[B]}
    left = (await eventlog.read(names.servers))[2].event
    assert isinstance(left, ServerLeft) and left.drained and left.status == "closed"


async def test_unreadable_sets_answer_503(names: StreamNames):
    broken = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    try:
        handler = Heartbeat(broken, names, time.time)
        deliveries = [
            Delivery(names.requests, "1-0", fs(A)),
            Delivery(names.requests, "1-1", external(B)),
            Delivery(names.requests, "1-2", register()),
        ]
        first, second, third = await handler.handle(deliveries)
    finally:
        await broken.aclose()
    assert isinstance(first, Outcome) and isinstance(second, Outcome) and isinstance(third, Outcome)
    assert [(stream, e.status) for stream, e in first.appends] == [(names.replies(INGEST), 503)]  # type: ignore[attr-defined]
    assert first.writes == []
    assert x_members(second.appends[0][1]) is None and second.appends[0][1].status == 200  # type: ignore[arg-type,attr-defined]
    assert third.appends == [] and third.writes == []


# --- expiry -------------------------------------------------------------------------------------------


def expiry(eventlog: EventLog, expires_ms: int = 60_000, check_ms: int = 20_000) -> ServerExpiry:
    return ServerExpiry(
        eventlog.redis, eventlog, expires_interval_ms=expires_ms, check_interval_ms=check_ms, clock=time.time
    )


async def expired_events(eventlog: EventLog) -> list[ServerExpired]:
    stored = await eventlog.read(eventlog.names.servers)
    return [s.event for s in stored if isinstance(s.event, ServerExpired)]


async def test_members_without_last_seen_are_adopted_and_expire_once(
    eventlog: EventLog, names: StreamNames, redis: Redis
):
    await redis.sadd(names.active_fs, "10.1.1.1:5060")  # e.g. written by the previous sidecar
    await redis.sadd(names.active_rtp, "10.1.1.2")
    await redis.sadd(names.fs_service_url, "http://10.1.1.1:3000")
    first, second = expiry(eventlog), expiry(eventlog)
    assert await first.adopt_unseen(now_ms=1_000_000) == 3
    assert await second.adopt_unseen(now_ms=1_000_500) == 0  # nx: the first sighting stands
    assert await redis.zscore(names.server_last_seen("fs"), "10.1.1.1:5060") == 1_000_000
    assert await first.sweep(now_ms=1_060_000) == []  # exactly EXPIRES_INTERVAL old: still alive
    assert await sets(redis, names) == ({"10.1.1.1:5060"}, {"10.1.1.2"}, {"http://10.1.1.1:3000"})
    gone = await first.sweep(now_ms=1_060_001) + await second.sweep(now_ms=1_060_001)
    assert sorted((e.kind, e.member, e.last_seen_ms) for e in gone) == [
        ("fs", "10.1.1.1:5060", 1_000_000),
        ("rtp", "10.1.1.2", 1_000_000),
        ("service-url", "http://10.1.1.1:3000", 1_000_000),
    ]
    assert await sets(redis, names) == (set(), set(), set())
    recorded = await expired_events(eventlog)
    assert sorted(e.event_id for e in recorded) == sorted(e.event_id for e in gone)
    for kind in ("fs", "rtp", "service-url"):
        assert await redis.zcard(names.server_last_seen(kind)) == 0


async def test_concurrent_sweeps_record_each_expiry_once(eventlog: EventLog, names: StreamNames, redis: Redis):
    members = [f"10.2.0.{i}:5060" for i in range(40)]
    await redis.sadd(names.active_fs, *members)
    sweepers = [expiry(eventlog) for _ in range(4)]
    await sweepers[0].adopt_unseen(now_ms=1_000)
    results = await asyncio.gather(*(s.sweep(now_ms=100_000) for s in sweepers))
    assert sorted(e.member for result in results for e in result) == sorted(members)
    assert len(await expired_events(eventlog)) == 40


async def test_a_check_in_between_read_and_claim_keeps_the_member(
    eventlog: EventLog, names: StreamNames, redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    await redis.sadd(names.active_rtp, "10.3.0.1", "10.3.0.2")
    sweeper = expiry(eventlog)
    await sweeper.adopt_unseen(now_ms=1_000)
    read = redis.zrangebyscore

    async def read_then_check_in(*args, **kwargs):
        lapsed = await read(*args, **kwargs)
        if lapsed:  # both were lapsed when read; now 10.3.0.1 checks in through another sidecar
            assert len(lapsed) == 2
            await redis.zadd(names.server_last_seen("rtp"), {"10.3.0.1": 99_000}, gt=True)
        return lapsed

    monkeypatch.setattr(redis, "zrangebyscore", read_then_check_in)
    gone = await sweeper.sweep(now_ms=100_000)
    assert [e.member for e in gone] == ["10.3.0.2"]
    assert await smembers(redis, names.active_rtp) == {"10.3.0.1"}


async def test_silent_servers_expire_and_pinging_ones_stay_with_two_sidecars(
    eventlog: EventLog, names: StreamNames, redis: Redis
):
    """Two sidecars: each runs a heartbeat consumer (one group) and an expiry sweep. B pings through
    either sidecar in turn; A falls silent. A expires exactly once; B never leaves."""
    expires_ms, check_ms = 1500, 300
    consumers = [heartbeat_consumer(eventlog, "sidecar-1"), heartbeat_consumer(eventlog, "sidecar-2")]
    sweepers = [expiry(eventlog, expires_ms, check_ms) for _ in range(2)]
    await eventlog.append(names.requests, [fs(A), rtp(A), fs(B), rtp(B)])
    await drain(consumers[0])
    tasks = [asyncio.create_task(s.run()) for s in sweepers]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in sweepers)), 5)
        deadline = time.monotonic() + (expires_ms + 4 * check_ms) / 1000
        turn = 0
        while time.monotonic() < deadline:
            await eventlog.append(names.requests, [fs(B), rtp(B)])
            await drain(consumers[turn % 2])  # the pings reach one sidecar or the other
            turn += 1
            await asyncio.sleep(0.2)
    finally:
        for sweeper in sweepers:
            sweeper.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert await sets(redis, names) == ({f"{B}:5060"}, {B}, {FS_URL[B]})
    gone = await expired_events(eventlog)
    assert sorted((e.kind, e.member) for e in gone) == [("fs", f"{A}:5060"), ("rtp", A), ("service-url", FS_URL[A])]
    assert sum(s.expired for s in sweepers) == 3
    assert all(isinstance(r, ReplyIssued) and r.status == 200 for r in await replies(eventlog))
