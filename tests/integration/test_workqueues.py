"""Work-queue streams trimmed by consumption, against the real Redis: nothing unread or unacknowledged goes,
the grace window keeps a bounded number of consumed entries, a stream without its group is left alone."""

from __future__ import annotations

from redis.asyncio import Redis

from events import RegisterChallenged, StreamNames, stamp
from runtime.eventlog import EventLog
from runtime.workqueues import WorkQueueTrimmer


def challenged(i: int) -> RegisterChallenged:
    return RegisterChallenged(
        **stamp(),
        aor=f"u{i}@example.com",
        realm="example.com",
        nonce="n",
        source_ip="127.0.0.1",
        source_port=5000,
        call_id=f"c{i}",
    )


async def test_only_entries_every_group_has_acknowledged_are_trimmed(
    eventlog: EventLog, names: StreamNames, redis: Redis
) -> None:
    stream = names.requests
    ids = await eventlog.append(stream, [challenged(i) for i in range(10)])
    await eventlog.ensure_group(stream, "a")
    await eventlog.ensure_group(stream, "b")
    await redis.xreadgroup("a", "c1", {stream: ">"}, count=6)  # a has read 6 ...
    await redis.xack(stream, "a", *ids[:2], *ids[3:6])  # ... and acknowledged all but the third
    await redis.xreadgroup("b", "c1", {stream: ">"}, count=10)
    await redis.xack(stream, "b", *ids)  # b has consumed everything
    trimmer = WorkQueueTrimmer(redis, {stream: ("a", "b")}, grace_s=0, grace_max=0)
    assert await trimmer.trim(stream, ("a", "b")) == 2
    left = [entry_id.decode() for entry_id, _ in await redis.xrange(stream)]
    assert left == ids[2:]  # a's pending entry and everything after it stay
    await redis.xack(stream, "a", ids[2])
    assert await trimmer.trim(stream, ("a", "b")) == 4  # up to what a has not read yet
    assert [entry_id.decode() for entry_id, _ in await redis.xrange(stream)] == ids[6:]


async def test_the_grace_window_keeps_at_most_grace_max_consumed_entries(
    eventlog: EventLog, names: StreamNames, redis: Redis
) -> None:
    stream = names.requests
    ids = await eventlog.append(stream, [challenged(i) for i in range(10)])
    await eventlog.ensure_group(stream, "a")
    await redis.xreadgroup("a", "c1", {stream: ">"}, count=10)
    await redis.xack(stream, "a", *ids)
    generous = WorkQueueTrimmer(redis, {stream: ("a",)}, grace_s=3600, grace_max=1000)
    assert await generous.sweep() == 0  # young and few: all kept for `events tail`
    bounded = WorkQueueTrimmer(redis, {stream: ("a",)}, grace_s=3600, grace_max=3)
    assert await bounded.sweep() == 7
    assert [entry_id.decode() for entry_id, _ in await redis.xrange(stream)] == ids[7:]


async def test_a_stream_whose_group_does_not_exist_yet_is_left_alone(
    eventlog: EventLog, names: StreamNames, redis: Redis
) -> None:
    stream = names.refreshes
    await eventlog.append(stream, [challenged(i) for i in range(3)])
    trimmer = WorkQueueTrimmer(redis, names.work_queues, grace_s=0, grace_max=0)
    assert await trimmer.sweep() == 0
    assert await redis.xlen(stream) == 3


async def test_the_facts_are_trimmed_only_up_to_what_the_snapshot_covers(
    eventlog: EventLog, names: StreamNames, redis: Redis
) -> None:
    stream = names.registrations
    ids = await eventlog.append(stream, [challenged(i) for i in range(6)])
    await eventlog.ensure_group(stream, "projections")
    await redis.xreadgroup("projections", "c1", {stream: ">"}, count=10)
    await redis.xack(stream, "projections", *ids)
    trimmer = WorkQueueTrimmer(redis, names.work_queues, grace_s=0, grace_max=0, bounds=names.trim_bounds)
    assert await trimmer.trim(stream, names.work_queues[stream]) == 0  # no snapshot yet: nothing goes
    await redis.set(names.registrations_snapshot_covers, ids[3])
    try:
        assert await trimmer.trim(stream, names.work_queues[stream]) == 4
        assert [entry_id.decode() for entry_id, _ in await redis.xrange(stream)] == ids[4:]
    finally:
        await redis.delete(names.registrations_snapshot_covers)
