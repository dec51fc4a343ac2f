"""The snapshot of the live bindings, so that `replay registrations` needs only the tail of the log.

Every `interval_s`, when facts came since the last one, the snapshot reads the due index, the versions and the
records of the live bindings (in chunks of a round trip each) after noting the last `registrations` entry,
and stores them compressed in one key, with the id it covers in another. A binding written after that id
may already be in the snapshot; replaying the tail over it is harmless, since the records' script ignores
any fact older than the version a binding has. The work-queue trimmer never trims `registrations` past what the snapshot
covers, so the snapshot and the tail after it always make the whole state.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable
from typing import Any

import msgspec
from redis.asyncio import Redis

from events import StreamNames, user_key
from runtime.connections import is_cluster_client
from runtime.periodic import Periodic

log = logging.getLogger(__name__)

CHUNK = 1000


class Binding(msgspec.Struct, array_like=True, frozen=True):
    aor: str
    version: str
    expiry_ms: int
    record: str


class Snapshot(msgspec.Struct, frozen=True):
    covers: str  # the last registrations entry included
    taken_at_ms: int
    bindings: list[Binding]


_decoder = msgspec.json.Decoder(Snapshot)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def take_snapshot(redis: Redis, names: StreamNames, now_ms: int) -> Snapshot:
    """Reads the live bindings in chunks of CHUNK (each chunk one round trip of each command), so that neither
    Redis nor this process's event loop is held for long however many phones there are."""
    last: Any = await redis.xrevrange(names.registrations, count=1)
    covers = _text(last[0][0]) if last else "0-0"
    bindings: list[Binding] = []
    chunk: list[tuple[str, int]] = []
    # ZSCAN returns every binding present for the whole scan at least once, whatever changes meanwhile.
    async for aor, score in redis.zscan_iter(names.expiry_due, count=CHUNK):
        chunk.append((_text(aor), int(score)))
        if len(chunk) >= CHUNK:
            bindings += await _bindings(redis, names, chunk)
            chunk = []
    if chunk:
        bindings += await _bindings(redis, names, chunk)
    return Snapshot(covers, now_ms, bindings)


async def _bindings(redis: Redis, names: StreamNames, due: list[tuple[str, int]]) -> list[Binding]:
    aors = [aor for aor, _ in due]
    keys = [user_key(aor) for aor in aors]
    if is_cluster_client(redis):  # the records are in slots of their own, not the partition's
        versions = await redis.hmget(names.registration_versions, aors)
        records = await redis.mget_nonatomic(keys)  # type: ignore[attr-defined]
    else:
        pipe = redis.pipeline(transaction=False)
        pipe.hmget(names.registration_versions, aors)
        pipe.mget(keys)
        versions, records = await pipe.execute()
    return [
        Binding(aor, _text(version), expiry_ms, _text(record))
        for (aor, expiry_ms), version, record in zip(due, versions, records, strict=True)
        if version is not None and record is not None
    ]


async def store_snapshot(redis: Redis, names: StreamNames, snapshot: Snapshot) -> None:
    # Encoding and compressing a large snapshot takes tens of milliseconds: off the event loop (zlib lets go
    # of the GIL while it works), so SIP answers and heartbeats never wait for it.
    blob = await asyncio.to_thread(_compressed, snapshot)
    pipe = redis.pipeline(transaction=True)
    pipe.set(names.registrations_snapshot, blob)
    pipe.set(names.registrations_snapshot_covers, snapshot.covers)
    await pipe.execute()


def _compressed(snapshot: Snapshot) -> bytes:
    return zlib.compress(msgspec.json.encode(snapshot), 6)


async def load_snapshot(redis: Redis, names: StreamNames) -> Snapshot | None:
    blob: Any = await redis.get(names.registrations_snapshot)
    if blob is None:
        return None
    return _decoder.decode(zlib.decompress(blob))


class SnapshotTaker(Periodic):
    """A Worker that snapshots the live bindings every `interval_s`."""

    name = "registrations-snapshot"

    def __init__(
        self, redis: Redis, names: StreamNames, *, interval_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(interval_s)
        self.redis = redis
        self.names = names
        self.clock = clock
        self.taken = 0

    def metrics(self) -> dict[str, float]:
        return {"taken": self.taken}

    async def step(self) -> Snapshot | None:
        """A snapshot, unless no fact came since the last one (an idle cluster costs nothing)."""
        last: Any = await self.redis.xrevrange(self.names.registrations, count=1)
        newest = _text(last[0][0]) if last else "0-0"
        covered = await self.redis.get(self.names.registrations_snapshot_covers)
        if covered is not None and _text(covered) == newest:
            return None
        return await self.snapshot()

    async def snapshot(self) -> Snapshot:
        snapshot = await take_snapshot(self.redis, self.names, int(self.clock() * 1000))
        await store_snapshot(self.redis, self.names, snapshot)
        self.taken += 1
        log.debug("registrations snapshot taken bindings=%d covers=%s", len(snapshot.bindings), snapshot.covers)
        return snapshot
