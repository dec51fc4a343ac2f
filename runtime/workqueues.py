"""Work-queue streams trimmed by consumption: Redis keeps what grows with phones, not with requests.

`requests`, `heartbeats`, `refreshes` and `registrations` (StreamNames.work_queues) are read by known consumer
groups and by nobody else once read: a request's audit is the decision's fact and the history, a fact's the
history (and the snapshot of the bindings, for `replay`). Once every group that
reads a stream has acknowledged an entry it may go. The trimmer keeps:

- every entry some group has not read yet (after its `last-delivered-id`), or read and not acknowledged
  (its oldest pending id): a crashed consumer's pending entries are never trimmed;
- of the consumed ones, those younger than the grace window (`SIDECAR_WORKQUEUE_GRACE_S`, for
  `events tail` and debugging), but never more than `SIDECAR_WORKQUEUE_GRACE_MAX` of them, so the grace
  costs a bounded amount of memory whatever the request rate.

A stream may also be bounded by a key holding the last id that may go: `registrations` by what the snapshot
of the live bindings covers (projections/snapshot.py), so that the snapshot and the facts after it always
make the whole state for `replay`.

The groups of a stream are those that exist of its readers (the InfluxDB projections' group exists only where
InfluxDB is configured); a stream none of whose readers exists yet is left alone (its appends still trim by
the retention window).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from runtime.periodic import Periodic
from runtime.redis_scripts import Script

log = logging.getLogger(__name__)


def _id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


def _text(value: tuple[int, int]) -> str:
    return f"{value[0]}-{value[1]}"


# The id of the N-th entry before an id, when there are more than N (else nil): only the id crosses the wire,
# not the N entries.
OLDEST_OF_LAST = Script(
    "workqueue-oldest-of-last",
    """
local entries = redis.call('XREVRANGE', KEYS[1], ARGV[1], '-', 'COUNT', tonumber(ARGV[2]) + 1)
if #entries <= tonumber(ARGV[2]) then return false end
return entries[tonumber(ARGV[2])][1]
""",
)


class WorkQueueTrimmer(Periodic):
    """A Worker that trims the work-queue streams every `interval_s`."""

    name = "workqueue-trimmer"

    def __init__(
        self,
        redis: Redis,
        queues: Mapping[str, Sequence[str]],
        *,
        grace_s: float,
        grace_max: int,
        bounds: Mapping[str, str] | None = None,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(interval_s)
        self.redis = redis
        self.queues = dict(queues)
        self.grace_s = grace_s
        self.grace_max = grace_max
        self.bounds = dict(bounds or {})  # stream -> key holding the last id that may go (no key: nothing may)
        self.clock = clock
        self.trimmed = 0

    def metrics(self) -> dict[str, float]:
        return {"trimmed": self.trimmed}

    async def consumed_up_to(self, stream: str, groups: Sequence[str]) -> tuple[int, int] | None:
        """The first id some reading group still needs (everything before it is consumed by all of them), or
        None when none of the reading groups exists yet (nothing may be trimmed)."""
        try:
            info: Any = await self.redis.xinfo_groups(stream)
        except ResponseError:  # no such stream
            return None
        by_name = {(g["name"].decode() if isinstance(g["name"], bytes) else g["name"]): g for g in info}
        needed: tuple[int, int] | None = None
        for group in groups:
            entry = by_name.get(group)
            if entry is None:  # a reader not running in this deployment (the InfluxDB projections, say)
                continue
            last = _id(entry["last-delivered-id"])
            first_needed = (last[0], last[1] + 1)
            if int(entry["pending"]) > 0:
                summary: Any = await self.redis.xpending(stream, group)
                if summary["min"] is not None:  # (acknowledged since XINFO GROUPS: nothing pending then)
                    first_needed = min(first_needed, _id(summary["min"]))
            needed = first_needed if needed is None else min(needed, first_needed)
        bound_key = self.bounds.get(stream)
        if needed is not None and bound_key is not None:
            bound = await self.redis.get(bound_key)
            if bound is None:
                return None
            last = _id(bound)
            needed = min(needed, (last[0], last[1] + 1))
        return needed

    async def trim(self, stream: str, groups: Sequence[str]) -> int:
        """Trims one stream; returns how many entries went."""
        needed = await self.consumed_up_to(stream, groups)
        if needed is None:
            return 0
        keep_from = min(needed, (int((self.clock() - self.grace_s) * 1000), 0))
        # Never more than grace_max consumed entries: the grace_max-th before `needed` is the oldest kept.
        if self.grace_max == 0:
            keep_from = needed
        else:
            oldest_kept = await OLDEST_OF_LAST.run(self.redis, (stream,), (f"({_text(needed)}", self.grace_max))
            if oldest_kept:
                keep_from = max(keep_from, _id(oldest_kept))  # type: ignore[arg-type]
        removed = int(await self.redis.xtrim(stream, minid=_text(keep_from), approximate=False))
        self.trimmed += removed
        return removed

    async def step(self) -> int:
        return await self.sweep()

    async def sweep(self) -> int:
        total = 0
        for stream, groups in self.queues.items():
            total += await self.trim(stream, groups)
        return total
