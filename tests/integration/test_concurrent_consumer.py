"""The concurrent consumer against the real Redis: no head-of-line blocking, order per key, a bound on
what is in flight (the backlog stays in Redis), a clean stop, and dead consumers taken over and removed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from redis.asyncio import Redis

from events import Event, RegisterChallenged, RegistrationExpired, StreamNames, default_codec, stamp
from runtime.consumer import ConcurrentConsumer
from runtime.errors import StoreUnavailable
from runtime.eventlog import EventLog
from runtime.handling import Delivery, Outcome, Step
from runtime.resp import LinkSettings
from runtime.settings import EventLogSettings
from tests.conftest import REDIS_DB, REDIS_HOST, REDIS_PORT

GROUP = "g"


def challenged(aor: str, nonce: str = "n") -> RegisterChallenged:
    return RegisterChallenged(
        **stamp(),
        aor=aor,
        realm="example.com",
        nonce=nonce,
        source_ip="127.0.0.1",
        source_port=5000,
        call_id=f"call-{aor}-{nonce}",
    )


class Gated:
    """Decides every RegisterChallenged at once into a RegistrationExpired, except those of `held` AORs,
    which wait until their gate opens; records the order in which deliveries were begun."""

    def __init__(self, out_stream: str, held: Sequence[str] = ()) -> None:
        self.out_stream = out_stream
        self.gates = {aor: asyncio.Event() for aor in held}
        self.begun: list[str] = []

    def order_key(self, event: Event) -> str | None:
        return event.aor if isinstance(event, RegisterChallenged) else None

    async def begin(self, deliveries: Sequence[Delivery]) -> list[Step]:
        steps: list[Step] = []
        for delivery in deliveries:
            event = delivery.event
            assert isinstance(event, RegisterChallenged)
            self.begun.append(f"{event.aor}/{event.nonce}")
            gate = self.gates.get(event.aor)
            steps.append(self._after(gate, delivery) if gate is not None and not gate.is_set() else self._out(delivery))
        return steps

    async def _after(self, gate: asyncio.Event, delivery: Delivery) -> Outcome:
        await gate.wait()
        return self._out(delivery)

    def _out(self, delivery: Delivery) -> Outcome:
        event = delivery.event
        assert isinstance(event, RegisterChallenged)
        fact = RegistrationExpired(
            **stamp(event.correlation_id, delivery.entry_id),
            aor=f"{event.aor}/{event.nonce}",
            expiry_time_ms=0,
            granted_event_id=delivery.entry_id,
        )
        return Outcome(appends=[(self.out_stream, fact)])


async def outputs(redis: Redis, stream: str) -> list[str]:
    codec = default_codec()
    return [codec.decode(fields).aor for _, fields in await redis.xrange(stream)]  # type: ignore[attr-defined]


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def started(consumer: ConcurrentConsumer) -> asyncio.Task[None]:
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(consumer.ready.wait(), 5)
    return task


async def stopped(consumer: ConcurrentConsumer, task: asyncio.Task[None]) -> None:
    consumer.stop()
    await asyncio.wait_for(task, 5)


async def test_a_decision_waiting_on_io_holds_back_no_other_delivery(
    eventlog: EventLog, names: StreamNames, redis: Redis
) -> None:
    handler = Gated(names.registrations, held=["slow@example.com"])
    consumer = ConcurrentConsumer(eventlog, names.requests, GROUP, handler, max_in_flight=100)
    task = await started(consumer)
    try:
        await eventlog.append(names.requests, [challenged("slow@example.com")])
        await until(lambda: _true(handler.begun), "the slow delivery to begin")
        await eventlog.append(names.requests, [challenged(f"u{i}@example.com") for i in range(20)])

        async def fast_ones_committed() -> bool:
            return len(await outputs(redis, names.registrations)) == 20

        await until(fast_ones_committed, "the 20 deliveries behind the slow one")
        assert "slow@example.com/n" not in await outputs(redis, names.registrations)
        assert (await redis.xpending(names.requests, GROUP))["pending"] == 1  # only the slow one
        handler.gates["slow@example.com"].set()

        async def all_committed() -> bool:
            return len(await outputs(redis, names.registrations)) == 21

        await until(all_committed, "the slow delivery")
        assert (await redis.xpending(names.requests, GROUP))["pending"] == 0
    finally:
        await stopped(consumer, task)


async def test_deliveries_of_one_key_are_decided_in_stream_order_each_after_the_one_before_is_committed(
    eventlog: EventLog, names: StreamNames, redis: Redis
) -> None:
    handler = Gated(names.registrations, held=["phone@example.com"])
    consumer = ConcurrentConsumer(eventlog, names.requests, GROUP, handler, max_in_flight=100)
    task = await started(consumer)
    try:
        await eventlog.append(
            names.requests,
            [
                challenged("phone@example.com", "1"),
                challenged("phone@example.com", "2"),
                challenged("other@example.com", "1"),
                challenged("phone@example.com", "3"),
            ],
        )

        async def other_committed() -> bool:
            return await outputs(redis, names.registrations) == ["other@example.com/1"]

        await until(other_committed, "the other AOR's delivery")
        # The phone's second and third REGISTERs wait behind its first, which waits on its I/O.
        assert handler.begun == ["phone@example.com/1", "other@example.com/1"]
        handler.gates["phone@example.com"].set()

        async def phone_committed() -> bool:
            return len(await outputs(redis, names.registrations)) == 4

        await until(phone_committed, "the phone's deliveries")
        assert await outputs(redis, names.registrations) == [
            "other@example.com/1",
            "phone@example.com/1",
            "phone@example.com/2",
            "phone@example.com/3",
        ]
        assert [b for b in handler.begun if b.startswith("phone")] == [f"phone@example.com/{n}" for n in "123"]
    finally:
        await stopped(consumer, task)


async def test_beyond_max_in_flight_it_stops_reading_and_the_backlog_waits_in_redis(
    eventlog: EventLog, names: StreamNames, redis: Redis
) -> None:
    aors = [f"u{i}@example.com" for i in range(20)]
    handler = Gated(names.registrations, held=aors)
    consumer = ConcurrentConsumer(eventlog, names.requests, GROUP, handler, max_in_flight=5)
    task = await started(consumer)
    try:
        await eventlog.append(names.requests, [challenged(aor) for aor in aors])

        async def five_begun() -> bool:
            return len(handler.begun) == 5

        await until(five_begun, "five deliveries in flight")
        await asyncio.sleep(0.2)  # several read turns: none reads more
        assert len(handler.begun) == 5
        assert (await redis.xpending(names.requests, GROUP))["pending"] == 5  # the other 15 were never read
        assert consumer.metrics()["in_flight"] == 5
        for gate in handler.gates.values():
            gate.set()

        async def all_committed() -> bool:
            return len(await outputs(redis, names.registrations)) == 20

        await until(all_committed, "the whole backlog")
        assert sorted(handler.begun) == sorted(f"{aor}/n" for aor in aors)
    finally:
        await stopped(consumer, task)


async def test_a_stop_commits_what_is_in_flight_before_it_returns(
    eventlog: EventLog, names: StreamNames, redis: Redis
) -> None:
    handler = Gated(names.registrations, held=["slow@example.com"])
    consumer = ConcurrentConsumer(eventlog, names.requests, GROUP, handler, max_in_flight=10)
    task = await started(consumer)
    await eventlog.append(names.requests, [challenged("slow@example.com")])
    await until(lambda: _true(handler.begun), "the slow delivery to begin")
    consumer.stop()
    await asyncio.sleep(0.1)
    assert not task.done()  # it waits for the delivery in flight
    handler.gates["slow@example.com"].set()
    await asyncio.wait_for(task, 5)
    assert await outputs(redis, names.registrations) == ["slow@example.com/n"]
    assert (await redis.xpending(names.requests, GROUP))["pending"] == 0
    # A clean stop leaves the group: nothing pending, so the consumer is removed, and its liveness key goes.
    assert await redis.xinfo_consumers(names.requests, GROUP) == []
    assert not await redis.exists(names.consumer_alive(GROUP, consumer.name))


async def test_a_dead_consumers_entries_are_taken_over_within_its_liveness_and_it_leaves_the_group(
    redis: Redis, names: StreamNames, eventlog_settings: EventLogSettings
) -> None:
    # Idle claims only after a minute: what is taken over here is taken over because its consumer died.
    settings = replace(eventlog_settings, claim_idle_ms=60_000, consumer_liveness_ms=600)
    eventlog = EventLog(redis, default_codec(), names, settings, LinkSettings(REDIS_HOST, REDIS_PORT, REDIS_DB))
    try:
        await eventlog.append(names.requests, [challenged(f"u{i}@example.com") for i in range(10)])
        await eventlog.ensure_group(names.requests, GROUP)
        doomed = ConcurrentConsumer(eventlog, names.requests, GROUP, Gated(names.registrations), max_in_flight=100)
        await doomed._announce()
        assert len(await doomed._reader.read_group(GROUP, doomed.name, {names.requests: ">"}, 100, None)) == 10
        # ... and the process dies: nothing committed, the liveness key is no longer refreshed.
        died_at = time.monotonic()

        handler = Gated(names.registrations)
        peer = ConcurrentConsumer(eventlog, names.requests, GROUP, handler, max_in_flight=100)
        task = await started(peer)
        try:

            async def taken_over() -> bool:
                return len(await outputs(redis, names.registrations)) == 10

            await until(taken_over, "the dead consumer's entries", timeout_s=10)
            took_s = time.monotonic() - died_at
            assert took_s < 4.0, took_s  # its liveness (0.6 s) + the check period + the takeover idle (1 s)
            assert peer.stats.taken_over == 10
            assert (await redis.xpending(names.requests, GROUP))["pending"] == 0

            async def dead_one_removed() -> bool:
                consumers = await redis.xinfo_consumers(names.requests, GROUP)
                return [c["name"] for c in consumers] == [peer.name.encode()]

            await until(dead_one_removed, "the dead consumer to leave the group")
            assert peer.stats.consumers_removed == 1
        finally:
            await stopped(peer, task)
    finally:
        eventlog.close()


async def _true(value: object) -> bool:
    return bool(value)


class Flaky(Gated):
    """Like Gated, but the first `faults` begins of every delivery meet a store fault (Redis away for a moment)."""

    def __init__(self, out_stream: str, faults: int) -> None:
        super().__init__(out_stream)
        self.faults = faults
        self.tries: dict[str, int] = {}

    async def begin(self, deliveries: Sequence[Delivery]) -> list[Step]:
        steps: list[Step] = []
        for delivery in deliveries:
            tries = self.tries[delivery.entry_id] = self.tries.get(delivery.entry_id, 0) + 1
            if tries <= self.faults:
                steps.append(StoreUnavailable("reading cached bindings failed: ConnectionError"))
            else:
                steps += await super().begin([delivery])
        return steps


async def test_a_delivery_that_met_a_store_fault_is_begun_again_at_once_not_after_claim_idle(
    eventlog: EventLog, names: StreamNames, redis: Redis
) -> None:
    """Two store faults in a row for each (begun again 0.25 s, then 0.5 s later): both decided within seconds, from
    their first delivery, in order (the AOR's second request waits behind its first)."""
    handler = Flaky(names.registrations, faults=2)
    consumer = ConcurrentConsumer(eventlog, names.requests, GROUP, handler, max_in_flight=100)
    task = await started(consumer)
    try:
        started_at = time.monotonic()
        requests = [challenged("blip@example.com", "1"), challenged("blip@example.com", "2")]
        await eventlog.append(names.requests, requests)

        async def both_committed() -> bool:
            return await outputs(redis, names.registrations) == ["blip@example.com/1", "blip@example.com/2"]

        await until(both_committed, "the deliveries after two store faults each", timeout_s=5)
        assert time.monotonic() - started_at < 0.25 + 0.5 + 0.25 + 0.5 + 1.0  # retried here, not after 30 s
        assert consumer.stats.retried == 4 and consumer.stats.failed == 0
        assert list(handler.tries.values()) == [3, 3]
        assert (await redis.xpending(names.requests, GROUP))["pending"] == 0
    finally:
        await stopped(consumer, task)
