"""What a run keeps in Redis, measured two ways, and whether the service has caught up.

`used_memory` (INFO memory) is the allocator's count for the whole server: exact, but the server is
shared (other runs, tests, jambonz itself), so a delta over a run also holds whatever the others did
meanwhile. The per-key sum is robust to that: `MEMORY USAGE <key> SAMPLES 0` (every element, no
sampling) of each key of the run, which are
- the cluster's keys, `<cluster>:*` (the service's streams, history, indexes, checkpoints; a run has
  a cluster id of its own);
- the realm's registration records, `user:*@<realm>`;
- the run's share of `active-user`, a sorted set every realm shares: its whole MEMORY USAGE times the
  run's members over all members (the whole is reported beside it).
The per-key sum leaves out what the server spends per key outside the value (its dict entries, an
expiry entry per key with a TTL): `used_memory` has that.

`backlog` reads every consumer group of the run's streams (XINFO GROUPS): entries pending (delivered,
not acknowledged) plus entries not yet delivered (lag).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from bench.records import ACTIVE_USER_KEY

BATCH = 1000
DRAIN_POLL_S = 0.2
_LENGTH_COMMAND = {"zset": "ZCARD", "list": "LLEN", "stream": "XLEN", "hash": "HLEN", "set": "SCARD"}
_HISTORY = re.compile(r":history:")
_PARTITION = re.compile(r"^sidecar:\{\d+\}:")


@dataclass
class KeyGroup:
    """Keys of one kind: how many, their MEMORY USAGE together, and how many elements they hold."""

    keys: int = 0
    bytes: int = 0
    entries: int = 0

    def add(self, usage: int, entries: int) -> None:
        self.keys += 1
        self.bytes += usage
        self.entries += entries

    def as_dict(self) -> dict[str, int]:
        return {"keys": self.keys, "bytes": self.bytes, "entries": self.entries}


@dataclass
class Footprint:
    """One measurement of the run's Redis memory."""

    used_memory: int
    streams: dict[str, KeyGroup] = field(default_factory=dict)  # by name under the cluster prefix
    history: KeyGroup = field(default_factory=KeyGroup)
    records: KeyGroup = field(default_factory=KeyGroup)
    other: dict[str, KeyGroup] = field(default_factory=dict)  # the cluster's other keys, by name
    active_user: dict[str, int] = field(default_factory=dict)

    @property
    def keys_bytes(self) -> int:
        """The per-key sum: every key of the run and its share of active-user."""
        groups = [*self.streams.values(), self.history, self.records, *self.other.values()]
        return sum(group.bytes for group in groups) + self.active_user.get("share_bytes", 0)

    def parts(self) -> dict[str, int]:
        """The per-key sum by part: each stream, the history, the records, the cluster's other keys
        (indexes, checkpoints), the share of active-user."""
        parts = {f"stream {_PARTITION.sub('', name)}": group.bytes for name, group in self.streams.items()}
        return {
            **parts,
            "history": self.history.bytes,
            "records": self.records.bytes,
            "other cluster keys": sum(group.bytes for group in self.other.values()),
            "active-user share": self.active_user.get("share_bytes", 0),
        }

    @property
    def stream_entries(self) -> dict[str, int]:
        return {name: group.entries for name, group in self.streams.items()}

    def as_dict(self) -> dict[str, object]:
        return {
            "used_memory": self.used_memory,
            "keys_bytes": self.keys_bytes,
            "streams": {name: group.as_dict() for name, group in sorted(self.streams.items())},
            "history": self.history.as_dict(),
            "records": self.records.as_dict(),
            "other": {name: group.as_dict() for name, group in sorted(self.other.items())},
            "active_user": self.active_user,
        }


class RedisFootprint:
    """Measures the keys of one cluster id and one realm (see the module's docstring)."""

    def __init__(self, client: Redis, cluster_id: str, realm: str) -> None:
        self.client = client
        self.cluster_prefix = f"{cluster_id}:"
        self.realm = realm

    async def measure(self) -> Footprint:
        footprint = Footprint(used_memory=int((await self.client.info("memory"))["used_memory"]))
        cluster_keys = await self._scan(f"{self.cluster_prefix}*")
        for key, kind, usage, entries in await self._describe(cluster_keys):
            name = key.removeprefix(self.cluster_prefix)
            if _HISTORY.search(name):
                footprint.history.add(usage, entries)
            elif kind == "stream":
                footprint.streams.setdefault(name, KeyGroup()).add(usage, entries)
            else:
                footprint.other.setdefault(name, KeyGroup()).add(usage, entries)
        for _, _, usage, entries in await self._describe(await self._scan(f"user:*@{self.realm}")):
            footprint.records.add(usage, entries)
        footprint.active_user = await self._active_user_share()
        return footprint

    async def backlog(self) -> dict[str, int]:
        """Entries pending or not yet delivered, by `<stream> <group>`, over the run's streams."""
        waiting: dict[str, int] = {}
        for key in await self._scan(f"{self.cluster_prefix}*", kind="stream"):
            groups = await self.client.xinfo_groups(key)
            if not groups:
                continue
            last_id = None
            for group in groups:
                lag = group.get("lag")
                if lag is None:  # unknown after deletions or trimming: compare the ids instead
                    if last_id is None:
                        last_id = _text((await self.client.xinfo_stream(key))["last-generated-id"])
                    lag = 0 if _text(group["last-delivered-id"]) == last_id else 1
                count = int(group["pending"]) + int(lag)
                if count:
                    waiting[f"{key.removeprefix(self.cluster_prefix)} {_text(group['name'])}"] = count
        return waiting

    async def drain(self, timeout_s: float) -> dict[str, object]:
        """Waits until no consumer group of the run has anything pending or undelivered (at most
        `timeout_s`); says how long it took and what was left."""
        started = time.perf_counter()
        deadline = started + timeout_s
        while True:
            waiting = await self.backlog()
            if not waiting or time.perf_counter() > deadline:
                return {"drained": not waiting, "waited_s": round(time.perf_counter() - started, 3), "left": waiting}
            await asyncio.sleep(DRAIN_POLL_S)

    async def _scan(self, pattern: str, kind: str | None = None) -> list[str]:
        keys = [_text(key) async for key in self.client.scan_iter(match=pattern, count=5000, _type=kind)]
        return sorted(keys)

    async def _describe(self, keys: Sequence[str]) -> list[tuple[str, str, int, int]]:
        """(key, type, MEMORY USAGE with every element counted, element count) of each key that still exists."""
        described = []
        for start in range(0, len(keys), BATCH):
            batch = keys[start : start + BATCH]
            async with self.client.pipeline(transaction=False) as pipe:
                for key in batch:
                    pipe.type(key)
                kinds = [_text(kind) for kind in await pipe.execute()]
            async with self.client.pipeline(transaction=False) as pipe:
                for key, kind in zip(batch, kinds, strict=True):
                    pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
                    length = _LENGTH_COMMAND.get(kind)
                    if length is not None:
                        pipe.execute_command(length, key)
                    else:
                        pipe.exists(key)  # a string (or a key gone meanwhile): one element
                replies = await pipe.execute()
            for index, (key, kind) in enumerate(zip(batch, kinds, strict=True)):
                usage, entries = replies[2 * index], replies[2 * index + 1]
                if usage is not None:
                    described.append((key, kind, int(usage), int(entries)))
        return described

    async def _active_user_share(self) -> dict[str, int]:
        members = await self.client.zcard(ACTIVE_USER_KEY)
        if not members:
            return {"bytes": 0, "members": 0, "run_members": 0, "share_bytes": 0}
        whole = int(await self.client.execute_command("MEMORY", "USAGE", ACTIVE_USER_KEY, "SAMPLES", "0") or 0)
        run_members = 0
        async for _ in self.client.zscan_iter(ACTIVE_USER_KEY, match=f"user:*@{self.realm}", count=5000):
            run_members += 1
        return {
            "bytes": whole,
            "members": members,
            "run_members": run_members,
            "share_bytes": round(whole * run_members / members),
        }


def stream_growth(before: Footprint, after: Footprint) -> dict[str, int]:
    """Entries added to each stream between two measurements (negative: trimmed more than added)."""
    names = sorted(set(before.streams) | set(after.streams))
    return {name: after.stream_entries.get(name, 0) - before.stream_entries.get(name, 0) for name in names}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
