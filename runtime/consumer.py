"""The one consumer loop: read a batch, handle it, commit outputs + checkpoint + XACK atomically.

At-least-once delivery, exactly-once effects for a crashed consumer: nothing of a batch is
visible until its MULTI/EXEC, so a consumer that dies between handling and committing leaves
its entries pending, and a peer re-claims them (XPENDING IDLE + XCLAIM) once they have been
idle for `claim_idle_ms`. An entry delivered `max_deliveries` times, or one that cannot be
decoded, is moved to the dead stream with its error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from events import EventDecodeError
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
class _Batch:
    deliveries: list[Delivery] = field(default_factory=list)
    dead: list[tuple[RawEntry, str, int]] = field(default_factory=list)  # entry, error, deliveries


class Consumer:
    """Runs one handler for one consumer group of one stream until `stop()`."""

    def __init__(
        self,
        eventlog: EventLog,
        stream: str,
        group: str,
        handler: BatchHandler,
        *,
        name: str | None = None,
        block_ms: int | None = None,
    ) -> None:
        self.log = eventlog
        self.stream = stream
        self.group = group
        self.handler = handler
        self.name = name or f"{group}-{os.getpid()}-{os.urandom(3).hex()}"
        settings = eventlog.settings
        self.batch_size = settings.batch_size
        self.block_ms = block_ms if block_ms is not None else settings.block_ms
        self.claim_idle_ms = settings.claim_idle_ms
        self.max_deliveries = settings.max_deliveries
        self.stats = ConsumerStats()
        self.metrics_name = f"consumer_{group}_{stream.rsplit(':', 1)[-1]}"
        self.ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._next_claim = 0.0
        self._failures: dict[str, str] = {}  # entry id -> last error, for the dead letter
        self._failures_key = eventlog.names.failures(group)

    def metrics(self) -> dict[str, float]:
        return {key: getattr(self.stats, key) for key in self.stats.__slots__}  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stop reading; the batch in hand is finished and committed first."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        await self.log.ensure_group(self.stream, self.group)
        self.ready.set()
        log.info("consumer started stream=%s group=%s name=%s", self.stream, self.group, self.name)
        backoff = 0.05
        try:
            while not self._stopping.is_set():
                try:
                    await self.run_once()
                    backoff = 0.05
                except RedisError as exc:
                    log.warning(
                        "consumer store error group=%s error=%s; retrying in %.2fs", self.group, exc, backoff
                    )
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
        finally:
            log.info(
                "consumer stopped group=%s name=%s committed=%d dead=%d",
                self.group,
                self.name,
                self.stats.committed,
                self.stats.dead,
            )

    async def run_once(self) -> int:
        """One read-handle-commit turn (claims first when due). Returns entries processed."""
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self.claim_idle_ms / 2000
            claimed = await self._claim()
            if claimed:
                return await self._process(claimed)
        entries = await self._read()
        if not entries:
            return 0
        return await self._process(self._as_batch(entries, {}))

    async def _read(self) -> list[RawEntry]:
        block = None if self._stopping.is_set() else self.block_ms
        response = await self.log.redis.xreadgroup(
            self.group, self.name, {self.stream: ">"}, count=self.batch_size, block=block
        )
        if not response:
            return []
        return list(response[0][1])

    async def _claim(self) -> _Batch | None:
        """Re-claims entries idle in any consumer's pending list longer than claim_idle_ms."""
        redis = self.log.redis
        pending = await redis.xpending_range(
            self.stream, self.group, min="-", max="+", count=self.batch_size, idle=self.claim_idle_ms
        )
        if not pending:
            return None
        ids = [p["message_id"] for p in pending]
        counts = {_text(p["message_id"]): int(p["times_delivered"]) + 1 for p in pending}
        claimed = await redis.xclaim(self.stream, self.group, self.name, self.claim_idle_ms, ids)
        entries = [entry for entry in claimed if entry[1] is not None]
        if not entries:
            return None
        self.stats.claimed += len(entries)
        log.info("re-claimed entries group=%s count=%d", self.group, len(entries))
        over = [_text(e[0]) for e in entries if counts.get(_text(e[0]), 1) > self.max_deliveries]
        if over:
            errors = await redis.hmget(self._failures_key, over)
            for entry_id, error in zip(over, errors, strict=True):
                if error is not None:
                    self._failures[entry_id] = _text(error)
        return self._as_batch(entries, counts)

    def _as_batch(self, entries: Sequence[RawEntry], counts: dict[str, int]) -> _Batch:
        batch = _Batch()
        for entry in entries:
            entry_id = _text(entry[0])
            count = counts.get(entry_id, 1)
            if count > self.max_deliveries:
                error = self._failures.get(entry_id, "handler did not finish (consumer lost or timed out)")
                batch.dead.append((entry, f"gave up after {count - 1} deliveries: {error}", count - 1))
                continue
            try:
                event = self.log.codec.decode(entry[1])
            except EventDecodeError as exc:
                batch.dead.append((entry, f"decode error: {exc}", count))
                continue
            batch.deliveries.append(Delivery(self.stream, entry_id, event, count))
        return batch

    async def _process(self, batch: _Batch | None) -> int:
        if batch is None:
            return 0
        results: Sequence[Outcome | BaseException] = []
        if batch.deliveries:
            results = await self.handler.handle(batch.deliveries)
            if len(results) != len(batch.deliveries):
                raise RuntimeError(
                    f"handler of {self.group} returned {len(results)} results "
                    f"for {len(batch.deliveries)} deliveries"
                )
        await self._commit(batch, results)
        self.stats.batches += 1
        self.stats.delivered += len(batch.deliveries)
        return len(batch.deliveries) + len(batch.dead)

    async def _commit(self, batch: _Batch, results: Sequence[Outcome | BaseException]) -> None:
        pipe = self.log.redis.pipeline(transaction=True)
        writes = [c for r in results if isinstance(r, Outcome) for c in r.writes]
        for script in scripts_used(writes):
            pipe.execute_command("SCRIPT", "LOAD", script.source)
        acked: list[str] = []
        failed = 0
        for delivery, result in zip(batch.deliveries, results, strict=True):
            if isinstance(result, BaseException):
                failed += 1
                self._failures[delivery.entry_id] = f"{type(result).__name__}: {result}"
                pipe.hset(self._failures_key, delivery.entry_id, self._failures[delivery.entry_id])
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
                pipe.execute_command(*self.log.xadd_command(stream, event))
            for command in result.writes:
                pipe.execute_command(*command)
            acked.append(delivery.entry_id)
            if delivery.delivery_count > 1:
                pipe.hdel(self._failures_key, delivery.entry_id)
        for entry, error, count in batch.dead:
            entry_id = _text(entry[0])
            fields: dict[bytes | str, bytes | str | int] = dict(entry[1])
            fields.update(
                {
                    "dead_error": error,
                    "dead_stream": self.stream,
                    "dead_id": entry_id,
                    "dead_group": self.group,
                    "dead_deliveries": count,
                }
            )
            pipe.xadd(self.log.names.dead, fields, maxlen=100_000, approximate=True)
            acked.append(entry_id)
            self._failures.pop(entry_id, None)
            log.error("entry moved to dead stream group=%s id=%s error=%s", self.group, entry_id, error)
        if batch.dead:
            pipe.hdel(self._failures_key, *(_text(entry[0]) for entry, _, _ in batch.dead))
        if acked:
            pipe.xack(self.stream, self.group, *acked)
            pipe.hset(self.log.names.checkpoint(self.group), self.stream, acked[-1])
        if not acked and not failed:
            return
        await pipe.execute()
        for entry_id in acked:
            self._failures.pop(entry_id, None)
        self.stats.committed += len(acked) - len(batch.dead)
        self.stats.dead += len(batch.dead)
        self.stats.failed += failed

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            pass


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
