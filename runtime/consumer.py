"""The one consumer loop: read a batch, handle it, commit outputs + checkpoint + XACK atomically.

At-least-once delivery, exactly-once effects for a crashed consumer: nothing of a batch is
visible until its MULTI/EXEC, so a consumer that dies between handling and committing leaves
its entries pending, and a peer re-claims them (XPENDING IDLE + XCLAIM) once they have been
idle for `claim_idle_ms`. An entry delivered `max_deliveries` times, or one that cannot be
decoded, is moved to the dead stream with its error.

One consumer may follow several streams with one group: a single XREADGROUP reads them all
and a single commit acknowledges them, so a role pays one round trip per batch, not one per
stream.

Every consumer keeps a liveness key (`consumer_alive`, a TTL it refreshes). A peer that finds a
consumer of its group without one takes over its pending entries at once (they are worth
deciding only while the phone still waits) and removes it from the group once it has none.

`Consumer` hands its handler whole batches, in order (projections, heartbeats). `ConcurrentConsumer`
keeps reading while decisions wait on I/O: many deliveries in flight (bounded: beyond the bound it
stops reading, and the backlog stays in Redis), each committed as soon as it is decided, in
groups made of whatever was decided while the previous commit was in flight.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from events import Event, EventDecodeError, StreamNames
from runtime.eventlog import EventLog
from runtime.faults import REDIS_FAULTS, STORE_FAULTS
from runtime.handling import BatchHandler, ConcurrentHandler, Delivery, Outcome, Step
from runtime.redis_scripts import scripts_used

log = logging.getLogger(__name__)

RawEntry = tuple[bytes, dict[bytes, bytes]]


@dataclass(slots=True)
class ConsumerStats:
    delivered: int = 0
    committed: int = 0
    failed: int = 0
    dead: int = 0
    claimed: int = 0
    taken_over: int = 0  # entries claimed from consumers found dead (no liveness key)
    consumers_removed: int = 0  # dead consumers removed from the group
    batches: int = 0
    in_flight: int = 0  # ConcurrentConsumer: deliveries read and not yet committed
    retried: int = 0  # ConcurrentConsumer: deliveries begun again after a store fault


@dataclass(slots=True)
class _Dead:
    stream: str
    entry: RawEntry
    error: str
    deliveries: int


@dataclass(slots=True)
class _Batch:
    deliveries: list[Delivery] = field(default_factory=list)
    dead: list[_Dead] = field(default_factory=list)


class Consumer:
    """Runs one handler for one consumer group over one or more streams until `stop()`."""

    REMEMBERED_FAILURES = 10_000  # last errors kept in memory (the failures hash in Redis keeps them all)

    def __init__(
        self,
        eventlog: EventLog,
        stream: str | Sequence[str],
        group: str,
        handler: BatchHandler | ConcurrentHandler,
        *,
        name: str | None = None,
        block_ms: int | None = None,
        linger_ms: int = 0,
        names: StreamNames | None = None,
    ) -> None:
        self.log = eventlog
        # The partition whose keys (checkpoint, failures, liveness, dead letters) go with the streams read.
        self.names = names or eventlog.names
        self.streams = [stream] if isinstance(stream, str) else list(stream)
        self.group = group
        self.handler = handler
        self.name = name or f"{group}-{os.getpid()}-{os.urandom(3).hex()}"
        settings = eventlog.settings
        self.batch_size = settings.batch_size
        self.block_ms = block_ms if block_ms is not None else settings.block_ms
        # A consumer off the request path (projections) may wait this long after a short batch before
        # reading again, so that at moderate load it reads tens of entries per round trip, not one.
        self.linger_s = linger_ms / 1000
        self._last_read = 0.0
        self.claim_idle_ms = settings.claim_idle_ms
        self.liveness_ms = settings.consumer_liveness_ms
        self.max_deliveries = settings.max_deliveries
        self.stats = ConsumerStats()
        # Named by the group's kind: an SBC's own group (`edge:<ingest_id>`) gives the same series on every SBC.
        kind, partition = group.split(":", 1)[0], self.names.partition
        self.metrics_name = f"consumer_{kind}" if not partition else f"consumer_{kind}_p{partition}"
        self.ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._next_claim = 0.0
        self._next_takeover = 0.0
        self._alive_key = self.names.consumer_alive(group, self.name)
        self._failures: dict[str, str] = {}  # "<stream>|<id>" -> last error, for the dead letter
        self._failures_key = self.names.failures(group)
        self._positions = {s: ">" for s in self.streams}
        self._reader = eventlog.blocking_reader()

    @property
    def stream(self) -> str:
        """The first (usually the only) stream followed."""
        return self.streams[0]

    def metrics(self) -> dict[str, float]:
        values = {key: getattr(self.stats, key) for key in self.stats.__slots__}  # type: ignore[attr-defined]
        handler_metrics = getattr(self.handler, "metrics", None)  # e.g. the registrar's webhook gate
        if callable(handler_metrics):
            values.update(handler_metrics())
        return values

    def stop(self) -> None:
        """Stop reading; the batch in hand is finished and committed first."""
        self._stopping.set()

    async def run(self) -> None:
        for stream in self.streams:
            await self.log.ensure_group(stream, self.group)
        await self._announce()
        self.ready.set()
        log.info("consumer started streams=%s group=%s name=%s", ",".join(self.streams), self.group, self.name)
        try:
            async with asyncio.TaskGroup() as tasks:
                keep_alive = tasks.create_task(self._keep_alive(), name=f"{self.name}-alive")
                try:
                    await self._serve(tasks)
                finally:
                    keep_alive.cancel()
            await self._leave()
        finally:
            self._reader.close()
            log.info(
                "consumer stopped group=%s name=%s committed=%d dead=%d",
                self.group,
                self.name,
                self.stats.committed,
                self.stats.dead,
            )

    async def _serve(self, tasks: asyncio.TaskGroup) -> None:
        """The read loop, until `stop()`; store errors are retried with a backoff."""
        backoff = 0.05
        while not self._stopping.is_set():
            try:
                await self.run_once()
                backoff = 0.05
            except REDIS_FAULTS as exc:
                if "NOGROUP" in str(exc):  # Redis restarted without its data: the group is gone
                    await self._recreate_groups()
                    continue
                log.warning("consumer store error group=%s error=%s; retrying in %.2fs", self.group, exc, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    # --- liveness and takeover -------------------------------------------------------------------

    async def _announce(self) -> None:
        await self.log.redis.set(self._alive_key, self.name, px=self.liveness_ms)

    async def _keep_alive(self) -> None:
        """Refreshes the liveness key three times per TTL, so one slow refresh does not look like a death."""
        while True:
            await asyncio.sleep(self.liveness_ms / 3000)
            try:
                await self._announce()
            except REDIS_FAULTS as exc:
                log.warning("consumer liveness not refreshed group=%s error=%s", self.group, exc)

    async def _leave(self) -> None:
        """On a clean stop: the liveness key goes, and so does this consumer when nothing of it is pending."""
        try:
            await self.log.redis.delete(self._alive_key)
            for stream in self.streams:
                pending: Any = await self.log.redis.xpending_range(
                    stream, self.group, min="-", max="+", count=1, consumername=self.name
                )
                if not pending:
                    await self.log.redis.xgroup_delconsumer(stream, self.group, self.name)
        except REDIS_FAULTS as exc:
            log.warning("consumer not removed from its group group=%s error=%s", self.group, exc)

    async def _orphans(self) -> dict[str, list[str]]:
        """Per stream, the other consumers of the group whose liveness key has lapsed (and how idle they are).

        Those with nothing pending and idle longer than the liveness TTL are removed from the group here;
        the names of those with pending entries are returned, for their entries to be taken over.
        """
        redis = self.log.redis
        found: dict[str, list[str]] = {}
        for stream in self.streams:
            consumers: Any = await redis.xinfo_consumers(stream, self.group)
            others = [c for c in consumers if _text(c["name"]) != self.name]
            if not others:
                continue
            names = [_text(c["name"]) for c in others]
            pipe = redis.pipeline(transaction=False)
            for name in names:
                pipe.exists(self.names.consumer_alive(self.group, name))
            alive = await pipe.execute()
            for consumer, name, is_alive in zip(others, names, alive, strict=True):
                if is_alive:
                    continue
                if int(consumer["pending"]) > 0:
                    found.setdefault(stream, []).append(name)
                elif int(consumer["idle"]) > self.liveness_ms:
                    # XGROUP DELCONSUMER drops pending entries with the consumer: only an empty one goes.
                    if await redis.xgroup_delconsumer(stream, self.group, name) == 0:
                        self.stats.consumers_removed += 1
                        log.info("removed dead consumer group=%s stream=%s consumer=%s", self.group, stream, name)
        return found

    async def _pending_of_orphans(self) -> list[tuple[str, list[Any]]]:
        """XPENDING entries of dead consumers, idle at least a second (so two peers never both take one)."""
        orphans = await self._orphans()
        pending: list[tuple[str, list[Any]]] = []
        for stream, names in orphans.items():
            for name in names:
                entries: Any = await self.log.redis.xpending_range(
                    stream,
                    self.group,
                    min="-",
                    max="+",
                    count=self.batch_size,
                    consumername=name,
                    idle=TAKEOVER_IDLE_MS,
                )
                if entries:
                    log.warning(
                        "taking over a dead consumer's entries group=%s consumer=%s count=%d",
                        self.group,
                        name,
                        len(entries),
                    )
                    pending.append((stream, entries))
        return pending

    async def _recreate_groups(self) -> None:
        log.warning("consumer group missing, creating it again group=%s", self.group)
        try:
            for stream in self.streams:
                await self.log.ensure_group(stream, self.group)
        except REDIS_FAULTS as exc:
            log.warning("consumer group not created group=%s error=%s", self.group, exc)
            await self._sleep(0.5)

    async def run_once(self) -> int:
        """One read-handle-commit turn (claims first when due). Returns entries processed."""
        now = time.monotonic()
        claimed = await self._claim_due(now)
        if claimed:
            return await self._process(claimed)
        if self.linger_s:
            wait = self._last_read + self.linger_s - now
            if wait > 0:
                await self._sleep(wait)
        entries = await self._read()
        if len(entries) < self.batch_size:
            self._last_read = time.monotonic()
        if not entries:
            return 0
        return await self._process(self._as_batch(entries, {}))

    async def _read(self) -> list[tuple[str, RawEntry]]:
        block = None if self._stopping.is_set() else self.block_ms
        return await self._reader.read_group(self.group, self.name, self._positions, self.batch_size, block)

    async def _claim_due(self, now: float) -> _Batch | None:
        """Takes over dead consumers' entries (every second) and re-claims long-idle ones (every claim_idle / 2)."""
        pending: list[tuple[str, list[Any]]] = []
        min_idle_ms = TAKEOVER_IDLE_MS
        if now >= self._next_takeover:
            self._next_takeover = now + TAKEOVER_CHECK_S
            pending = await self._pending_of_orphans()
            self.stats.taken_over += sum(len(entries) for _, entries in pending)
        if not pending and now >= self._next_claim:
            self._next_claim = now + self.claim_idle_ms / 2000
            redis = self.log.redis
            min_idle_ms = self.claim_idle_ms
            for stream in self.streams:
                entries: Any = await redis.xpending_range(
                    stream, self.group, min="-", max="+", count=self.batch_size, idle=self.claim_idle_ms
                )
                if entries:
                    pending.append((stream, entries))
        if not pending:
            return None
        return await self._claim(pending, min_idle_ms)

    async def _claim(self, pending: list[tuple[str, list[Any]]], min_idle_ms: int) -> _Batch | None:
        """XCLAIMs the given XPENDING entries (those still idle `min_idle_ms`: a peer may have been faster)."""
        redis = self.log.redis
        claimed: list[tuple[str, RawEntry]] = []
        counts: dict[str, int] = {}
        for stream, listed in pending:
            entries = [p for p in listed if not self._holds(stream, p["message_id"])]
            if not entries:
                continue
            ids = [p["message_id"] for p in entries]
            for p in entries:
                counts[_key(stream, p["message_id"])] = int(p["times_delivered"]) + 1
            got: Any = await redis.xclaim(stream, self.group, self.name, min_idle_ms, ids)
            claimed += [(stream, entry) for entry in got if entry[1] is not None]
        if not claimed:
            return None
        self.stats.claimed += len(claimed)
        log.info("re-claimed entries group=%s count=%d", self.group, len(claimed))
        over = [_key(s, e[0]) for s, e in claimed if counts.get(_key(s, e[0]), 1) > self.max_deliveries]
        errors: dict[str, str] = {}  # the last error of each entry about to go dead, as any consumer recorded it
        if over:
            recorded = await redis.hmget(self._failures_key, over)
            errors = {key: _text(error) for key, error in zip(over, recorded, strict=True) if error is not None}
        return self._as_batch(claimed, counts, errors)

    def _holds(self, stream: str, entry_id: bytes | str) -> bool:
        """Whether this consumer is working on the entry now (then it is not claimed again, by itself)."""
        return False

    def _as_batch(
        self, entries: Sequence[tuple[str, RawEntry]], counts: dict[str, int], errors: dict[str, str] | None = None
    ) -> _Batch:
        batch = _Batch()
        decode = self.log.codec.decode
        if len(self.streams) > 1:  # one story across streams: handled in the order the entries were added
            entries = sorted(entries, key=_entry_order)
        for stream, entry in entries:
            entry_id = _text(entry[0])
            count = counts.get(_key(stream, entry_id), 1) if counts else 1  # counts: only for re-claimed entries
            if count > self.max_deliveries:
                key = _key(stream, entry_id)
                lost = "handler did not finish (consumer lost or timed out)"
                error = (errors.get(key) if errors else None) or self._failures.get(key, lost)
                batch.dead.append(_Dead(stream, entry, f"gave up after {count - 1} deliveries: {error}", count - 1))
                continue
            try:
                event = decode(entry[1])
            except EventDecodeError as exc:
                batch.dead.append(_Dead(stream, entry, f"decode error: {exc}", count))
                continue
            batch.deliveries.append(Delivery(stream, entry_id, event, count))
        return batch

    async def _process(self, batch: _Batch | None) -> int:
        if batch is None:
            return 0
        results: Sequence[Outcome | BaseException] = []
        if batch.deliveries:
            results = await cast(BatchHandler, self.handler).handle(batch.deliveries)  # (ConcurrentConsumer: never)
            if len(results) != len(batch.deliveries):
                raise RuntimeError(
                    f"handler of {self.group} returned {len(results)} results for {len(batch.deliveries)} deliveries"
                )
        await self._commit(batch, results)
        self.stats.batches += 1
        self.stats.delivered += len(batch.deliveries)
        return len(batch.deliveries) + len(batch.dead)

    async def _commit(self, batch: _Batch, results: Sequence[Outcome | BaseException]) -> None:
        commands: list[Sequence[object]] = []
        acked: dict[str, list[str]] = {}
        failed = 0
        append = self.log.append_commands
        local_sink = self.log.local_sink
        local: list[tuple[Callable[[Event], None], Event]] = []
        for delivery, result in zip(batch.deliveries, results, strict=True):
            if isinstance(result, BaseException):
                failed += 1
                key = _key(delivery.stream, delivery.entry_id)
                error = f"{type(result).__name__}: {result}"
                self._remember_failure(key, error)
                commands.append(("HSET", self._failures_key, key, error))
                log.warning(
                    "handler failed group=%s id=%s type=%s delivery=%d error=%r",
                    self.group,
                    delivery.entry_id,
                    delivery.event.TYPE,
                    delivery.delivery_count,
                    result,
                )
                continue
            for stream, event in result.appends:
                sink = local_sink(stream)
                if sink is None:
                    commands.extend(append(stream, event))
                else:
                    local.append((sink, event))
            commands.extend(result.writes)
            acked.setdefault(delivery.stream, []).append(delivery.entry_id)
            if delivery.delivery_count > 1:
                commands.append(("HDEL", self._failures_key, _key(delivery.stream, delivery.entry_id)))
        for dead in batch.dead:
            entry_id = _text(dead.entry[0])
            fields: list[object] = [x for pair in dead.entry[1].items() for x in pair]
            fields += [
                "dead_error",
                dead.error,
                "dead_stream",
                dead.stream,
                "dead_id",
                entry_id,
                "dead_group",
                self.group,
                "dead_deliveries",
                dead.deliveries,
            ]
            commands.append(("XADD", self.names.dead, "MAXLEN", "~", 100_000, "*", *fields))
            commands.append(("HDEL", self._failures_key, _key(dead.stream, entry_id)))
            acked.setdefault(dead.stream, []).append(entry_id)
            self._failures.pop(_key(dead.stream, entry_id), None)
            log.error("entry moved to dead stream group=%s id=%s error=%s", self.group, entry_id, dead.error)
        checkpoint = self.names.checkpoint(self.group)
        for stream, ids in acked.items():
            commands.append(("XACK", stream, self.group, *ids))
            commands.append(("HSET", checkpoint, stream, ids[-1]))
        if not acked and not failed:
            return
        await self.log.commit(commands, scripts_used(commands))
        for sink, event in local:
            sink(event)
        if self._failures:
            for stream, ids in acked.items():
                for entry_id in ids:
                    self._failures.pop(_key(stream, entry_id), None)
        total = sum(len(ids) for ids in acked.values())
        self.stats.committed += total - len(batch.dead)
        self.stats.dead += len(batch.dead)
        self.stats.failed += failed

    def _remember_failure(self, key: str, error: str) -> None:
        """Keeps the last error of an entry for its dead letter; the oldest is forgotten past the bound.

        Forgetting loses nothing: every error is also in `<prefix>:failures:<group>`, read back when the
        entry is claimed again. The bound matters when peers finish entries that failed here.
        """
        self._failures.pop(key, None)
        self._failures[key] = error
        if len(self._failures) > self.REMEMBERED_FAILURES:
            del self._failures[next(iter(self._failures))]

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            pass


class ConcurrentConsumer(Consumer):
    """A consumer whose deliveries are decided concurrently and committed as each is decided.

    Reading goes on while decisions wait on I/O, up to `max_in_flight` deliveries read and not yet
    committed; beyond that it stops reading, so a backlog waits in Redis, not in memory. Deliveries
    with the same `order_key` are decided one after the other, in stream order, each after the one
    before it is committed; different keys never wait on each other.
    """

    def __init__(
        self,
        eventlog: EventLog,
        stream: str | Sequence[str],
        group: str,
        handler: ConcurrentHandler,
        *,
        max_in_flight: int,
        name: str | None = None,
        block_ms: int | None = None,
        names: StreamNames | None = None,
    ) -> None:
        super().__init__(eventlog, stream, group, handler, name=name, block_ms=block_ms, names=names)
        self.concurrent: ConcurrentHandler = handler
        self.max_in_flight = max(1, max_in_flight)
        self._in_flight = 0
        self._room = asyncio.Event()
        self._room.set()
        self._behind: dict[str, deque[Delivery]] = {}  # order key -> deliveries waiting for the one in flight
        self._decided: list[tuple[Delivery, Outcome | BaseException]] = []
        self._dead: list[_Dead] = []
        self._to_commit = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._held: set[str] = set()  # "<stream>|<id>" of every delivery in flight here
        self._retries: dict[str, int] = {}  # "<stream>|<id>" -> store faults met so far (see _settle)

    def _holds(self, stream: str, entry_id: bytes | str) -> bool:
        return _key(stream, entry_id) in self._held

    def metrics(self) -> dict[str, float]:
        self.stats.in_flight = self._in_flight
        return super().metrics()

    async def _serve(self, tasks: asyncio.TaskGroup) -> None:
        self._tasks = tasks
        committer = tasks.create_task(self._commit_loop(), name=f"{self.name}-commit")
        try:
            await super()._serve(tasks)
            await self._drained()
        finally:
            committer.cancel()

    async def run_once(self) -> int:
        claimed = await self._claim_due(time.monotonic())
        if claimed:
            self._admit(claimed)
        room = self.max_in_flight - self._in_flight
        if room <= 0:
            self._room.clear()
            await self._wait(self._room, self.block_ms / 1000)
            return 0
        block = None if self._stopping.is_set() else self.block_ms
        entries = await self._reader.read_group(
            self.group, self.name, self._positions, min(self.batch_size, room), block
        )
        if entries:
            self._admit(self._as_batch(entries, {}))
        return len(entries)

    def _admit(self, batch: _Batch) -> None:
        self._in_flight += len(batch.deliveries) + len(batch.dead)
        if batch.dead:
            self._dead += batch.dead
            self._to_commit.set()
        ready: list[Delivery] = []
        order_key = self.concurrent.order_key
        held = self._held
        for delivery in batch.deliveries:
            held.add(_key(delivery.stream, delivery.entry_id))
            key = order_key(delivery.event)
            if key is not None:
                waiting = self._behind.get(key)
                if waiting is not None:
                    waiting.append(delivery)
                    continue
                self._behind[key] = deque()
            ready.append(delivery)
        if ready:
            self._start(self._begin(ready))

    def _start(self, work: Awaitable[None]) -> None:
        assert self._tasks is not None, "started outside run()"
        self._tasks.create_task(work)  # type: ignore[arg-type]

    async def _begin(self, deliveries: list[Delivery]) -> None:
        try:
            steps: Sequence[Step] = await self.concurrent.begin(deliveries)
        except Exception as exc:  # noqa: BLE001 - the deliveries fail and are retried; the loop goes on
            steps = [exc] * len(deliveries)
        if len(steps) != len(deliveries):
            error = RuntimeError(f"handler of {self.group} began {len(steps)} of {len(deliveries)} deliveries")
            steps = [error] * len(deliveries)
        for delivery, step in zip(deliveries, steps, strict=True):
            if isinstance(step, Outcome | BaseException):
                self._settle(delivery, step)
            elif inspect.isawaitable(step):
                self._start(self._finish(delivery, step))
            else:
                self._settle(delivery, TypeError(f"handler step of type {type(step).__name__}"))
        self._to_commit.set()

    async def _finish(self, delivery: Delivery, step: Awaitable[Outcome]) -> None:
        result: Outcome | BaseException
        try:
            result = await step
        except Exception as exc:  # noqa: BLE001 - the delivery fails and is retried
            result = exc
        self._settle(delivery, result)
        self._to_commit.set()

    def _settle(self, delivery: Delivery, result: Outcome | BaseException) -> None:
        """A delivery's result goes to the next commit; one that met a store fault (nothing of it was written) is
        begun again here first, after RETRY_AFTER_S[n], so that a Redis or MySQL blip costs the phone a moment and
        not its deadline (a failed delivery is otherwise claimed again only after `claim_idle_ms`). It stays in
        flight meanwhile: the AOR's next requests still wait behind it."""
        if isinstance(result, STORE_FAULTS) or self._retries:  # the usual case, decided at the first try: neither
            key = _key(delivery.stream, delivery.entry_id)
            tries = self._retries.pop(key, 0)
            if isinstance(result, STORE_FAULTS) and tries < len(RETRY_AFTER_S) and not self._stopping.is_set():
                self._retries[key] = tries + 1
                self.stats.retried += 1
                self._start(self._again(delivery, RETRY_AFTER_S[tries]))
                return
        self._decided.append((delivery, result))

    async def _again(self, delivery: Delivery, delay_s: float) -> None:
        await self._wait(self._stopping, delay_s)  # a stop cuts the wait short: it is decided (or fails) at once
        await self._begin([delivery])

    async def _commit_loop(self) -> None:
        """Commits whatever was decided, one MULTI at a time: what is decided meanwhile makes the next one."""
        while True:
            await self._to_commit.wait()
            self._to_commit.clear()
            if not self._decided and not self._dead:
                continue
            decided, self._decided = self._decided, []
            dead, self._dead = self._dead, []
            batch = _Batch([delivery for delivery, _ in decided], dead)
            try:
                await self._commit(batch, [result for _, result in decided])
                self.stats.batches += 1
                self.stats.delivered += len(decided)
            except REDIS_FAULTS as exc:
                # Nothing was committed: the entries stay pending and are claimed again (claim_idle_ms).
                log.warning("commit failed group=%s entries=%d error=%s", self.group, len(decided) + len(dead), exc)
            self._release([delivery for delivery, _ in decided], len(dead))

    def _release(self, done: list[Delivery], dead: int) -> None:
        """Frees the room of committed deliveries and starts the next of each order key."""
        self._in_flight -= len(done) + dead
        ready: list[Delivery] = []
        order_key = self.concurrent.order_key
        held = self._held
        for delivery in done:
            held.discard(_key(delivery.stream, delivery.entry_id))
            key = order_key(delivery.event)
            if key is None:
                continue
            waiting = self._behind.get(key)
            if waiting:
                ready.append(waiting.popleft())
            else:
                self._behind.pop(key, None)
        if ready:
            self._start(self._begin(ready))
        if self._in_flight < self.max_in_flight:
            self._room.set()

    async def _drained(self) -> None:
        """After a stop: waits until every delivery in flight is committed (the app's grace bounds this)."""
        while self._in_flight > 0:
            self._room.clear()
            await self._room.wait()

    async def _wait(self, event: asyncio.Event, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            pass


TAKEOVER_CHECK_S = 1.0  # how often a consumer looks for dead peers
# A ConcurrentConsumer's delivery whose handler met a store fault is begun again after each of these (3.75 s in all,
# within a request's 10 s reply deadline); then it fails as any delivery does.
RETRY_AFTER_S = (0.25, 0.5, 1.0, 2.0)
TAKEOVER_IDLE_MS = 1000  # a dead peer's entry is taken once idle this long (a faster peer resets it)


def _entry_order(item: tuple[str, RawEntry]) -> tuple[int, int]:
    milliseconds, _, sequence = _text(item[1][0]).partition("-")
    return int(milliseconds), int(sequence or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _key(stream: str, entry_id: bytes | str) -> str:
    return f"{stream}|{_text(entry_id)}"
