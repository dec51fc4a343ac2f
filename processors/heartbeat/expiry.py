"""The server expiry sweep (SPEC 3): servers and service URLs silent for EXPIRES_INTERVAL ms leave their set.

Deliberate change from jambonz: the last-seen times are not a map in each process but one sorted
set per kind in Redis (`StreamNames.server_last_seen`), written by whichever sidecar took the
heartbeat. A server that pings only one of several SBCs therefore stays, and every sidecar's sweep
sees the same times. Each sidecar sweeps every CHECK_EXPIRES_INTERVAL ms; a Lua script claims
each lapsed member atomically (its score is re-checked, then ZREM + SREM + XADD of its prepared
ServerExpired), so exactly one sidecar removes a member and records its expiry, and a member that
checked in between the read and the script is left alone.

On a Redis Cluster the jambonz set is in a slot of its own: the script claims and records in the partition's
slot (score re-checked, ZREM, XADD) and the member then leaves its set by an SREM of its own. The claim is still
atomic, so one sidecar alone removes a member; a server that checks in between the claim and the SREM is out of its
set until its next heartbeat puts it back.

Members found in a set without a last-seen time (present at startup, written by another program,
or kept across a Redis restart of the index) are given "now", as jambonz loads its sets at startup.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import cast

from redis.asyncio import Redis

from events import ServerExpired, StreamNames
from events.envelope import new_event_id
from events.servers import ExpiringKind
from projections.servers import EXPIRING_KINDS, server_set
from runtime.eventlog import EventLog
from runtime.faults import STORE_FAULTS
from runtime.services import Clock

log = logging.getLogger(__name__)

_FAULTS: tuple[type[BaseException], ...] = (*STORE_FAULTS, TimeoutError)

SWEEP_TIMEOUT_S = 10.0
SWEEP_BATCH = 500  # candidates per kind per script call

# KEYS: last-seen zset, servers stream, member set (absent on a Redis Cluster: removed apart). ARGV: limit_ms,
# then per candidate: member, n, and the n XADD arguments after the stream name. Returns the members removed.
_CLAIM_LAPSED = """
local limit = tonumber(ARGV[1])
local removed = {}
local i = 2
while i <= #ARGV do
  local member = ARGV[i]
  local n = tonumber(ARGV[i + 1])
  local score = redis.call('ZSCORE', KEYS[1], member)
  if score and tonumber(score) < limit then
    redis.call('ZREM', KEYS[1], member)
    if not KEYS[3] or redis.call('SREM', KEYS[3], member) == 1 then
      redis.call('XADD', KEYS[2], unpack(ARGV, i + 2, i + 1 + n))
      removed[#removed + 1] = member
    end
  end
  i = i + 2 + n
end
return removed
"""


class ServerExpiry:
    """A Worker: adopts unseen members, then sweeps lapsed ones every `check_interval_ms`."""

    name = "server-expiry"

    def __init__(
        self,
        redis: Redis,
        eventlog: EventLog,
        *,
        expires_interval_ms: int,
        check_interval_ms: int,
        clock: Clock,
    ) -> None:
        self.redis = redis
        self.eventlog = eventlog
        self.names: StreamNames = eventlog.names
        self.expires_interval_ms = expires_interval_ms
        self.check_interval_ms = check_interval_ms
        self.clock = clock
        self.ready = asyncio.Event()
        self.expired = 0
        self._stopping = asyncio.Event()
        self._claim = redis.register_script(_CLAIM_LAPSED)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Adopts the members already in the sets, then sweeps one interval later and every interval."""
        log.info("server expiry started expires_ms=%d check_ms=%d", self.expires_interval_ms, self.check_interval_ms)
        while not self._stopping.is_set():
            if not await self._guarded(self.adopt_unseen()):
                await self._sleep(self.check_interval_ms / 1000)
                continue
            self.ready.set()
            break
        while not self._stopping.is_set():
            await self._sleep(self.check_interval_ms / 1000)
            if not self._stopping.is_set():
                await self._guarded(self.sweep())
        log.info("server expiry stopped expired=%d", self.expired)

    async def _guarded(self, work: Awaitable[object]) -> bool:
        """Runs one adoption or sweep with a deadline; a store fault is logged and tried next time."""
        try:
            async with asyncio.timeout(SWEEP_TIMEOUT_S):
                await work
        except _FAULTS as exc:
            log.warning("server expiry sweep failed error=%s", exc)
            return False
        return True

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def adopt_unseen(self, now_ms: int | None = None) -> int:
        """Gives every set member without a last-seen time `now`; returns how many were adopted."""
        now_ms = self._now_ms() if now_ms is None else now_ms
        pipe = self.redis.pipeline(transaction=False)
        for kind in EXPIRING_KINDS:
            pipe.smembers(server_set(self.names, kind))
        sets = await pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        for kind, members in zip(EXPIRING_KINDS, sets, strict=True):
            if members:
                pipe.zadd(self.names.server_last_seen(kind), dict.fromkeys(members, now_ms), nx=True)
        adopted = sum(await pipe.execute()) if len(pipe) else 0
        if adopted:
            log.info("server expiry adopted members without last-seen count=%d", adopted)
        return adopted

    async def sweep(self, now_ms: int | None = None) -> list[ServerExpired]:
        """Removes every member whose last `open` heartbeat is older than the expiry interval and
        records a ServerExpired for each one this sidecar removed."""
        now_ms = self._now_ms() if now_ms is None else now_ms
        await self.adopt_unseen(now_ms)
        limit_ms = now_ms - self.expires_interval_ms
        expired: list[ServerExpired] = []
        for kind in EXPIRING_KINDS:
            while True:
                removed, candidates = await self._sweep_kind(kind, limit_ms, now_ms)
                expired.extend(removed)
                if candidates < SWEEP_BATCH:
                    break
        self.expired += len(expired)
        return expired

    async def _sweep_kind(self, kind: ExpiringKind, limit_ms: int, now_ms: int) -> tuple[list[ServerExpired], int]:
        now = datetime.fromtimestamp(now_ms / 1000, UTC)
        seen_key = self.names.server_last_seen(kind)
        lapsed: Sequence[tuple[bytes, float]] = await self.redis.zrangebyscore(  # type: ignore[assignment]
            seen_key, "-inf", f"({limit_ms}", start=0, num=SWEEP_BATCH, withscores=True
        )
        if not lapsed:
            return [], 0
        prepared: dict[str, ServerExpired] = {}
        args: list[bytes | str | int | float] = [limit_ms]
        for raw, score in lapsed:
            member = raw.decode()
            event_id = new_event_id()
            event = ServerExpired(
                event_id=event_id,
                occurred_at=now,
                correlation_id=event_id,
                kind=kind,
                member=member,
                last_seen_ms=int(score),
            )
            # The XADD as the event log writes it (trimming included), less the command and stream.
            command = self.eventlog.xadd_command(self.names.servers, event)
            xadd = cast(list[bytes | str | int | float], command[2:])
            prepared[member] = event
            args += [member, len(xadd), *xadd]
        keys = [seen_key, self.names.servers]
        if not self.eventlog.cluster:
            keys.append(server_set(self.names, kind))
        removed = [prepared[m.decode() if isinstance(m, bytes) else m] for m in await self._claim(keys=keys, args=args)]
        if removed and self.eventlog.cluster:
            await self.redis.srem(server_set(self.names, kind), *(event.member for event in removed))
        for event in removed:
            log.info("server expired kind=%s member=%s last_seen_ms=%d", kind, event.member, event.last_seen_ms)
        return removed, len(lapsed)

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            pass
