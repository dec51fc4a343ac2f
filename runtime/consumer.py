"""The one consumer loop: read a batch, handle it, commit outputs + checkpoint + XACK atomically.

At-least-once delivery, exactly-once effects for a crashed consumer: nothing of a batch is
visible until its MULTI/EXEC, so a consumer that dies between handling and committing leaves
its entries pending, and a peer re-claims them (XPENDING IDLE + XCLAIM) once they have been
idle for `claim_idle_ms`. An entry delivered `max_deliveries` times, or one that cannot be
decoded, is moved to the dead stream with its error.

One consumer may follow several streams with one group: a single XREADGROUP reads them all
and a single commit acknowledges them, so a role pays one round trip per batch, not one per
stream.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from events import Event, EventDecodeError
from runtime.eventlog import EventLog
from runtime.handling import BatchHandler, Delivery, Outcome
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
    batches: int = 0


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
        handler: BatchHandler,
        *,
        name: str | None = None,
        block_ms: int | None = None,
        linger_ms: int = 0,
    ) -> None:
        self.log = eventlog
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
        self.max_deliveries = settings.max_deliveries
        self.stats = ConsumerStats()
        self.metrics_name = f"consumer_{group}"
        self.ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._next_claim = 0.0
        self._failures: dict[str, str] = {}  # "<stream>|<id>" -> last error, for the dead letter
        self._failures_key = eventlog.names.failures(group)
        self._positions = {s: ">" for s in self.streams}
        self._reader = eventlog.blocking_reader()

    @property
    def stream(self) -> str:
        """The first (usually the only) stream followed."""
        return self.streams[0]

    def metrics(self) -> dict[str, float]:
        return {key: getattr(self.stats, key) for key in self.stats.__slots__}  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stop reading; the batch in hand is finished and committed first."""
        self._stopping.set()

    async def run(self) -> None:
        for stream in self.streams:
            await self.log.ensure_group(stream, self.group)
        self.ready.set()
        log.info("consumer started streams=%s group=%s name=%s", ",".join(self.streams), self.group, self.name)
        backoff = 0.05
        try:
            while not self._stopping.is_set():
                try:
                    await self.run_once()
                    backoff = 0.05
                except RedisError as exc:
                    if "NOGROUP" in str(exc):  # Redis restarted without its data: the group is gone
                        await self._recreate_groups()
                        continue
                    log.warning("consumer store error group=%s error=%s; retrying in %.2fs", self.group, exc, backoff)
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
        finally:
            self._reader.close()
            log.info(
                "consumer stopped group=%s name=%s committed=%d dead=%d",
                self.group,
                self.name,
                self.stats.committed,
                self.stats.dead,
            )

    async def _recreate_groups(self) -> None:
        log.warning("consumer group missing, creating it again group=%s", self.group)
        try:
            for stream in self.streams:
                await self.log.ensure_group(stream, self.group)
        except RedisError as exc:
            log.warning("consumer group not created group=%s error=%s", self.group, exc)
            await self._sleep(0.5)

    async def run_once(self) -> int:
        """One read-handle-commit turn (claims first when due). Returns entries processed."""
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self.claim_idle_ms / 2000
            claimed = await self._claim()
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

    async def _claim(self) -> _Batch | None:
        """Re-claims entries idle in any consumer's pending list longer than claim_idle_ms."""
        redis = self.log.redis
        claimed: list[tuple[str, RawEntry]] = []
        counts: dict[str, int] = {}
        for stream in self.streams:
            pending: Any = await redis.xpending_range(
                stream, self.group, min="-", max="+", count=self.batch_size, idle=self.claim_idle_ms
            )
            if not pending:
                continue
            ids = [p["message_id"] for p in pending]
            for p in pending:
                counts[_key(stream, p["message_id"])] = int(p["times_delivered"]) + 1
            entries: Any = await redis.xclaim(stream, self.group, self.name, self.claim_idle_ms, ids)
            claimed += [(stream, entry) for entry in entries if entry[1] is not None]
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

    def _as_batch(
        self, entries: Sequence[tuple[str, RawEntry]], counts: dict[str, int], errors: dict[str, str] | None = None
    ) -> _Batch:
        batch = _Batch()
        decode = self.log.codec.decode
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
            results = await self.handler.handle(batch.deliveries)
            if len(results) != len(batch.deliveries):
                raise RuntimeError(
                    f"handler of {self.group} returned {len(results)} results for {len(batch.deliveries)} deliveries"
                )
        await self._commit(batch, results)
        self.stats.batches += 1
        self.stats.delivered += len(batch.deliveries)
        return len(batch.deliveries) + len(batch.dead)

    async def _commit(self, batch: _Batch, results: Sequence[Outcome | BaseException]) -> None:
        writes = [c for r in results if isinstance(r, Outcome) for c in r.writes]
        commands: list[Sequence[object]] = []
        acked: dict[str, list[str]] = {}
        failed = 0
        xadd = self.log.xadd_command
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
                    commands.append(xadd(stream, event))
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
            commands.append(("XADD", self.log.names.dead, "MAXLEN", "~", 100_000, "*", *fields))
            commands.append(("HDEL", self._failures_key, _key(dead.stream, entry_id)))
            acked.setdefault(dead.stream, []).append(entry_id)
            self._failures.pop(_key(dead.stream, entry_id), None)
            log.error("entry moved to dead stream group=%s id=%s error=%s", self.group, entry_id, dead.error)
        checkpoint = self.log.names.checkpoint(self.group)
        for stream, ids in acked.items():
            commands.append(("XACK", stream, self.group, *ids))
            commands.append(("HSET", checkpoint, stream, ids[-1]))
        if not acked and not failed:
            return
        await self.log.commit(commands, scripts_used(writes))
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _key(stream: str, entry_id: bytes | str) -> str:
    return f"{stream}|{_text(entry_id)}"
