"""The event log against the real Redis: delivery, crash recovery, dead letters, trimming."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from events import RegisterChallenged, RegistrationExpired, StreamNames, stamp
from runtime.consumer import Consumer
from runtime.eventlog import EventLog
from runtime.handling import Delivery, Fanout, Outcome


def challenged(i: int) -> RegisterChallenged:
    return RegisterChallenged(
        **stamp(),
        aor=f"u{i}@example.com",
        realm="example.com",
        nonce=str(i),
        source_ip="127.0.0.1",
        source_port=5000 + i,
        call_id=f"call-{i}",
    )


class Echo:
    """Turns every RegisterChallenged into a RegistrationExpired on another stream."""

    def __init__(self, out_stream: str, fail_aors: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.out_stream = out_stream
        self.fail_aors = fail_aors
        self.seen: list[str] = []

    async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome | BaseException]:
        results: list[Outcome | BaseException] = []
        for delivery in deliveries:
            event = delivery.event
            assert isinstance(event, RegisterChallenged)
            self.seen.append(event.aor)
            if event.aor in self.fail_aors:
                results.append(RuntimeError(f"cannot handle {event.aor}"))
                continue
            out = RegistrationExpired(
                **stamp(event.correlation_id, delivery.entry_id),
                aor=event.aor,
                expiry_time_ms=0,
                granted_event_id=delivery.entry_id,
            )
            results.append(Outcome(appends=[(self.out_stream, out)]))
        return results


async def drain(consumer: Consumer, turns: int = 50) -> None:
    for _ in range(turns):
        if await consumer.run_once() == 0:
            return


async def test_every_appended_event_is_delivered_and_acked(eventlog: EventLog, names: StreamNames, redis: Redis):
    events = [challenged(i) for i in range(120)]
    await eventlog.append(names.requests, events)
    handler = Echo(names.registrations)
    consumer = Consumer(eventlog, names.requests, "g", handler)
    await eventlog.ensure_group(names.requests, "g")
    await drain(consumer)
    assert sorted(handler.seen) == sorted(e.aor for e in events)
    out = await eventlog.read(names.registrations)
    assert sorted(e.event.aor for e in out) == sorted(e.aor for e in events)
    assert (await redis.xpending(names.requests, "g"))["pending"] == 0
    checkpoint = await redis.hget(names.checkpoint("g"), names.requests)
    last_id = (await redis.xrevrange(names.requests, count=1))[0][0]
    assert checkpoint == last_id


async def test_fanout_merges_outcomes_and_fails_a_delivery_any_handler_failed(names: StreamNames):
    class Appends:
        async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome | BaseException]:
            return [Outcome(appends=[(names.registrations, d.event)]) for d in deliveries]

    class Writes:
        async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome | BaseException]:
            return [
                ValueError("no") if d.entry_id == "1-1" else Outcome(writes=[("SET", d.entry_id, "1")])
                for d in deliveries
            ]

    deliveries = [Delivery(names.requests, f"1-{i}", challenged(i)) for i in range(3)]
    results = await Fanout(Appends(), Writes()).handle(deliveries)
    assert isinstance(results[1], ValueError)
    first = results[0]
    assert isinstance(first, Outcome)
    assert first.appends == [(names.registrations, deliveries[0].event)] and first.writes == [("SET", "1-0", "1")]


async def test_crash_between_handling_and_commit_is_finished_by_a_peer_exactly_once(
    eventlog: EventLog, names: StreamNames, redis: Redis
):
    await eventlog.append(names.requests, [challenged(i) for i in range(10)])
    await eventlog.ensure_group(names.requests, "g")
    crashed_handler = Echo(names.registrations)
    crashed = Consumer(eventlog, names.requests, "g", crashed_handler, name="crashed")
    entries = await crashed._read()  # delivered to "crashed" ...
    batch = crashed._as_batch(entries, {})
    await crashed_handler.handle(batch.deliveries)  # ... handled, and then the process dies: no commit.
    assert len(crashed_handler.seen) == 10
    assert await redis.xlen(names.registrations) == 0
    assert (await redis.xpending(names.requests, "g"))["pending"] == 10

    peer_handler = Echo(names.registrations)
    peer = Consumer(eventlog, names.requests, "g", peer_handler, name="peer")
    assert await peer.run_once() == 0  # nothing new, and not idle long enough to claim yet
    await asyncio.sleep(0.25)
    peer._next_claim = 0
    await drain(peer)
    assert sorted(peer_handler.seen) == sorted(crashed_handler.seen)
    outputs = await eventlog.read(names.registrations)
    assert len(outputs) == 10
    assert len({o.event.aor for o in outputs}) == 10
    assert (await redis.xpending(names.requests, "g"))["pending"] == 0
    assert peer.stats.claimed == 10


async def test_poison_entry_goes_dead_with_its_error_after_max_deliveries(
    eventlog: EventLog, names: StreamNames, redis: Redis
):
    await eventlog.append(names.requests, [challenged(i) for i in range(5)])
    handler = Echo(names.registrations, fail_aors={"u3@example.com"})
    consumer = Consumer(eventlog, names.requests, "g", handler)
    await eventlog.ensure_group(names.requests, "g")
    await drain(consumer)
    assert await redis.xlen(names.registrations) == 4
    deadline = time.monotonic() + 5
    while await redis.xlen(names.dead) == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        consumer._next_claim = 0
        await consumer.run_once()
    assert handler.seen.count("u3@example.com") == 3  # max_deliveries
    dead = await redis.xrange(names.dead)
    assert len(dead) == 1
    fields = dead[0][1]
    assert b"RuntimeError: cannot handle u3@example.com" in fields[b"dead_error"]
    assert fields[b"type"] == b"RegisterChallenged"
    assert fields[b"dead_group"] == b"g"
    assert (await redis.xpending(names.requests, "g"))["pending"] == 0
    assert await redis.xlen(names.registrations) == 4


async def test_errors_forgotten_in_memory_still_reach_the_dead_letters(
    eventlog: EventLog, names: StreamNames, redis: Redis
):
    await eventlog.append(names.requests, [challenged(i) for i in range(5)])
    handler = Echo(names.registrations, fail_aors={f"u{i}@example.com" for i in range(5)})
    consumer = Consumer(eventlog, names.requests, "g", handler)
    consumer.REMEMBERED_FAILURES = 2  # type: ignore[misc]
    await eventlog.ensure_group(names.requests, "g")
    await drain(consumer)
    deadline = time.monotonic() + 5
    while await redis.xlen(names.dead) < 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        consumer._next_claim = 0
        await consumer.run_once()
        assert len(consumer._failures) <= 2
    dead = await redis.xrange(names.dead)
    errors = sorted(fields[b"dead_error"].decode() for _, fields in dead)
    assert errors == [f"gave up after 3 deliveries: RuntimeError: cannot handle u{i}@example.com" for i in range(5)]


async def test_undecodable_entry_goes_dead_at_once(eventlog: EventLog, names: StreamNames, redis: Redis):
    await eventlog.append(names.requests, [challenged(1)])
    await redis.xadd(names.requests, {"type": "RegisterChallenged", "v": "1", "data": b'{"aor": 3}'})
    await redis.xadd(names.requests, {"type": "NoSuchEvent", "v": "1", "data": b"{}"})
    await eventlog.append(names.requests, [challenged(2)])
    handler = Echo(names.registrations)
    consumer = Consumer(eventlog, names.requests, "g", handler)
    await eventlog.ensure_group(names.requests, "g")
    await drain(consumer)
    assert handler.seen == ["u1@example.com", "u2@example.com"]
    dead = await redis.xrange(names.dead)
    assert [d[1][b"dead_deliveries"] for d in dead] == [b"1", b"1"]
    assert b"decode error" in dead[0][1][b"dead_error"]
    assert b"unknown event type 'NoSuchEvent'" in dead[1][1][b"dead_error"]
    assert (await redis.xpending(names.requests, "g"))["pending"] == 0


async def test_trimming_keeps_the_retention_window(eventlog: EventLog, names: StreamNames, redis: Redis):
    codec = eventlog.codec
    now_ms = int(time.time() * 1000)
    retention_ms = eventlog.settings.retention_s * 1000
    old_ids = [f"{now_ms - retention_ms - 60_000 + i}-0" for i in range(3)]
    for entry_id in old_ids:
        await redis.xadd(names.registrations, codec.encode(challenged(0)), id=entry_id)
    kept = await eventlog.append(names.registrations, [challenged(i) for i in range(4)])
    assert await redis.xlen(names.registrations) == 7
    removed = await eventlog.trim(names.registrations)
    assert removed == 3
    remaining = [e.entry_id for e in await eventlog.read(names.registrations)]
    assert remaining == kept


async def test_appends_carry_minid_trimming(eventlog: EventLog, names: StreamNames):
    command = eventlog.xadd_command(names.registrations, challenged(1))
    assert command[:3] == ["XADD", names.registrations, "MINID"]
    min_ms = int(str(command[4]).partition("-")[0])
    expected = int(time.time() * 1000) - eventlog.settings.retention_s * 1000
    assert abs(min_ms - expected) < 5000
    reply = eventlog.xadd_command(names.replies("ingest-1"), challenged(1))
    assert reply[2:5] == ["MAXLEN", "~", eventlog.settings.replies_maxlen]


async def test_graceful_stop_finishes_the_batch_in_hand(eventlog: EventLog, names: StreamNames, redis: Redis):
    started = asyncio.Event()
    release = asyncio.Event()

    class Slow:
        async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
            started.set()
            await release.wait()
            return [Outcome() for _ in deliveries]

    await eventlog.append(names.requests, [challenged(i) for i in range(5)])
    consumer = Consumer(eventlog, names.requests, "g", Slow())
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(started.wait(), 5)
    consumer.stop()
    release.set()
    await asyncio.wait_for(task, 5)
    assert (await redis.xpending(names.requests, "g"))["pending"] == 0
    assert consumer.stats.committed == 5
    await eventlog.append(names.requests, [challenged(9)])
    await asyncio.sleep(0.1)
    groups = {g["name"]: g for g in await redis.xinfo_groups(names.requests)}
    assert groups[b"g"]["lag"] == 1 and groups[b"g"]["pending"] == 0  # stopped: the new entry stays unread


@pytest.mark.parametrize("group", ["a", "b"])
async def test_groups_are_created_idempotently(eventlog: EventLog, names: StreamNames, redis: Redis, group: str):
    await eventlog.ensure_group(names.requests, group)
    await eventlog.ensure_group(names.requests, group)
    groups = await redis.xinfo_groups(names.requests)
    assert [g["name"] for g in groups] == [group.encode()]


async def test_a_lingering_consumer_reads_what_arrived_meanwhile_in_one_batch(eventlog: EventLog, names: StreamNames):
    class Sizes:
        def __init__(self) -> None:
            self.batches: list[int] = []

        async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome | BaseException]:
            self.batches.append(len(deliveries))
            return [Outcome() for _ in deliveries]

    await eventlog.ensure_group(names.requests, "g")
    eager, lazy = Sizes(), Sizes()
    await eventlog.append(names.requests, [challenged(0)])
    assert await Consumer(eventlog, names.requests, "g", eager, name="eager").run_once() == 1
    lingering = Consumer(eventlog, names.requests, "g", lazy, name="lazy", linger_ms=300)
    await eventlog.append(names.requests, [challenged(1)])
    assert await lingering.run_once() == 1  # a short batch: the next read waits out the linger ...
    turn = asyncio.create_task(lingering.run_once())
    for i in range(2, 6):  # ... while these arrive one at a time
        await eventlog.append(names.requests, [challenged(i)])
    assert await turn == 4 and lazy.batches == [1, 4]


async def test_appends_to_a_local_sink_skip_redis_and_arrive_only_after_the_commit(
    eventlog: EventLog, names: StreamNames, redis: Redis
):
    local_stream = names.replies("ingest-here")
    broken = {"on": True}

    class Replies:
        async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome | BaseException]:
            writes: list[tuple[str | bytes | int | float, ...]] = [("NOSUCHCOMMAND",)] if broken["on"] else []
            return [
                Outcome(appends=[(names.registrations, d.event), (local_stream, d.event)], writes=writes)
                for d in deliveries
            ]

    delivered: list[RegisterChallenged] = []
    eventlog.attach_local(local_stream, lambda event: delivered.append(event))  # type: ignore[arg-type]
    await eventlog.append(names.requests, [challenged(i) for i in range(3)])
    await eventlog.ensure_group(names.requests, "g")
    consumer = Consumer(eventlog, names.requests, "g", Replies())
    try:
        with pytest.raises(RedisError):
            await consumer.run_once()  # the commit fails: nothing stored, and no reply handed over
        assert delivered == [] and await redis.xlen(names.registrations) == 0
        broken["on"] = False
        consumer._next_claim = 0
        await asyncio.sleep(0.25)  # idle long enough to be claimed again (claim_idle_ms of the test settings)
        await drain(consumer)
    finally:
        eventlog.detach_local(local_stream)
    assert [e.aor for e in delivered] == ["u0@example.com", "u1@example.com", "u2@example.com"]
    assert await redis.xlen(local_stream) == 0 and await redis.xlen(names.registrations) == 3
