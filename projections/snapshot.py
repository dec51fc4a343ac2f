"""The snapshot of the live bindings, so that `replay registrations` needs only the tail of the log.

Every `interval_s` the snapshot reads the version index, the due index and the records of the live
bindings (pipelined, in chunks) after noting the last `registrations` entry, and stores them compressed
in one key, with the id it covers in another. A binding written after that id may already be in the
snapshot; replaying the tail over it is harmless, since the records' script ignores any fact older than
the version a binding has. The work-queue trimmer never trims `registrations` past what the snapshot
covers, so the snapshot and the tail after it always make the whole state.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from typing import Any

import msgspec
from redis.asyncio import Redis

from events import StreamNames, user_key
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
    last: Any = await redis.xrevrange(names.registrations, count=1)
    covers = _text(last[0][0]) if last else "0-0"
    raw_versions: Any = await redis.hgetall(names.registration_versions)
    versions = {_text(k): _text(v) for k, v in raw_versions.items()}
    raw_due: Any = await redis.zrange(names.expiry_due, 0, -1, withscores=True)
    due = {_text(aor): int(score) for aor, score in raw_due}
    aors = [aor for aor in due if aor in versions]
    bindings: list[Binding] = []
    for start in range(0, len(aors), CHUNK):
        chunk = aors[start : start + CHUNK]
        records = await redis.mget([user_key(aor) for aor in chunk])
        bindings += [
            Binding(aor, versions[aor], due[aor], _text(record))
            for aor, record in zip(chunk, records, strict=True)
            if record is not None
        ]
    return Snapshot(covers, now_ms, bindings)


async def store_snapshot(redis: Redis, names: StreamNames, snapshot: Snapshot) -> None:
    blob = zlib.compress(msgspec.json.encode(snapshot), 6)
    pipe = redis.pipeline(transaction=True)
    pipe.set(names.registrations_snapshot, blob)
    pipe.set(names.registrations_snapshot_covers, snapshot.covers)
    await pipe.execute()


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

    async def step(self) -> Snapshot:
        return await self.snapshot()

    async def snapshot(self) -> Snapshot:
        snapshot = await take_snapshot(self.redis, self.names, int(self.clock() * 1000))
        await store_snapshot(self.redis, self.names, snapshot)
        self.taken += 1
        log.debug("registrations snapshot taken bindings=%d covers=%s", len(snapshot.bindings), snapshot.covers)
        return snapshot
