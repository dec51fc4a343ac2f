"""SBC membership: each ingest announces itself in Redis, and a live peer cleans up after a dead one.

Every ingest keeps `sbc-alive:<ingest_id>` (JSON of its SIP addresses, start time, pid and host) with a TTL,
refreshed every second, and records its last heartbeat in `sbc-seen` (ingest id → ms, Redis time, so the SBCs'
clocks do not matter) and its details in `sbc-details`; `sbc-sidecar sbcs` reads them. A clean stop deletes the
key and notes the stop in the details.

An SBC whose key has lapsed is gone. It may have taken requests after its last heartbeat (up to a heartbeat
interval, more if its event loop lagged), but none after its key lapsed; so once a reply deadline has passed since
then, every request it was holding is past its deadline and has been answered 500 (or never answered), and nothing
will ever read its reply stream again. Each live ingest checks every few seconds, and a Lua script (one atomic
step, so two peers never disagree) deletes the gone SBC's reply stream (`replies:<ingest_id>`) and destroys its
edge group (`edge:<ingest_id>` on `commands`: only that SBC sent the commands addressed to it; the regbot
re-issues an unanswered REGISTER after 70 s). The first peer to do so records when in `sbc-cleaned` and logs it;
the deletion itself is repeated while the record lasts, which is harmless and removes a reply stream that a late
reply re-created. Consumers of the other groups are the consumer loop's business (runtime/consumer.py takes over
and removes consumers whose liveness key lapsed). The record of a gone SBC is forgotten after `DEAD_SBC_IN_SECOND`,
as jambonz forgets the `sbc_addresses` row of a dead SBC.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis

from events.streams import StreamNames, edge_group
from runtime.faults import REDIS_FAULTS
from runtime.redis_scripts import Script

log = logging.getLogger(__name__)

_FAULTS: tuple[type[BaseException], ...] = (*REDIS_FAULTS, OSError, TimeoutError)

ANNOUNCE_EVERY_S = 1.0
ADDRESS_CHECK_S = 0.1  # the front binds (or drachtio reconnects) after the first heartbeat
ALIVE_TTL_MS = 3000  # three missed heartbeats
CLEANUP_EVERY_S = 2.0
REDIS_TIMEOUT_S = 2.0


class SbcAnnouncement(msgspec.Struct, frozen=True, kw_only=True):
    """What an ingest says about itself in its heartbeat."""

    ingest_id: str
    sbc_address: str  # the front's hostport string: "udp/10.200.0.1:5060,tcp/..."
    public_address: str | None = None  # SIDECAR_SIP_PUBLIC_ADDRESS, when set
    started_at_ms: int
    pid: int
    host: str
    stopped_at_ms: int | None = None  # a clean stop


_NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "

# KEYS: alive, seen, details, cleaned. ARGV: ingest id, announcement JSON, TTL ms.
ANNOUNCE = Script(
    "sbc-announce",
    _NOW_MS
    + """
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[1])
return now
""",
)

# KEYS: alive, seen, details. ARGV: ingest id, announcement JSON (with its stop).
SIGN_OFF = Script(
    "sbc-sign-off",
    _NOW_MS
    + """
redis.call('DEL', KEYS[1])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return now
""",
)

# KEYS: alive, seen, cleaned, reply stream, commands stream. ARGV: ingest id, silent at least (ms), edge group.
# Returns {first clean-up (1/0), reply stream deleted (1/0), edge group destroyed (1/0)}, or {-1} if not gone.
CLEAN_UP = Script(
    "sbc-clean-up",
    _NOW_MS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1} end
local seen = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not seen or now - tonumber(seen) <= tonumber(ARGV[2]) then return {-1} end
local deleted = redis.call('DEL', KEYS[4])
local destroyed = 0
if redis.call('EXISTS', KEYS[5]) == 1 then destroyed = redis.call('XGROUP', 'DESTROY', KEYS[5], ARGV[3]) end
local first = redis.call('HSETNX', KEYS[3], ARGV[1], now)
return {first, deleted, destroyed}
""",
)

# KEYS: alive, seen, details, cleaned. ARGV: ingest id, forget after ms. Returns 1 if forgotten.
FORGET = Script(
    "sbc-forget",
    _NOW_MS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local seen = redis.call('ZSCORE', KEYS[2], ARGV[1])
if seen and now - tonumber(seen) <= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
""",
)


class Membership:
    """A Worker beside the ingest: announces this SBC every second and cleans up after gone peers."""

    name = "sbc-membership"

    def __init__(
        self,
        redis: Redis,
        names: StreamNames,
        ingest_id: str,
        sbc_address: Callable[[], str],
        *,
        public_address: str | None = None,
        reply_deadline_s: float = 10.0,
        forget_after_s: float = 3600.0,
        alive_ttl_s: float = ALIVE_TTL_MS / 1000,
    ) -> None:
        self.redis = redis
        self.names = names
        self.ingest_id = ingest_id
        self.sbc_address = sbc_address
        self.public_address = public_address
        self.reply_deadline_ms = int(reply_deadline_s * 1000)
        self.alive_ttl_ms = int(alive_ttl_s * 1000)  # every SBC's heartbeat key lives this long
        # A peer silent this long has been gone (its key lapsed) for a whole reply deadline.
        self.gone_after_ms = self.alive_ttl_ms + self.reply_deadline_ms
        self.forget_after_ms = max(int(forget_after_s * 1000), self.gone_after_ms)
        self.started_at_ms = 0
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self.announced = 0
        self.peers_cleaned = 0
        self.peers_forgotten = 0
        self.failures = 0

    def stop(self) -> None:
        self._stop.set()

    def metrics(self) -> dict[str, float]:
        return {
            "announced": self.announced,
            "peers_cleaned": self.peers_cleaned,
            "peers_forgotten": self.peers_forgotten,
            "failures": self.failures,
        }

    def announcement(self, *, stopped_at_ms: int | None = None) -> SbcAnnouncement:
        return SbcAnnouncement(
            ingest_id=self.ingest_id,
            sbc_address=self.sbc_address(),
            public_address=self.public_address,
            started_at_ms=self.started_at_ms,
            pid=os.getpid(),
            host=socket.gethostname(),
            stopped_at_ms=stopped_at_ms,
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.started_at_ms = int(await self._redis_time_ms())
        log.info("sbc announcing itself ingest_id=%s sbc_address=%s", self.ingest_id, self.sbc_address() or "-")
        self.ready.set()
        next_announce = next_cleanup = loop.time()
        announced_address: str | None = None
        try:
            while not self._stop.is_set():
                address = self.sbc_address()
                if loop.time() >= next_announce or address != announced_address:  # a new address at once
                    next_announce = loop.time() + ANNOUNCE_EVERY_S
                    announced_address = address
                    await self._guarded(self.announce())
                if loop.time() >= next_cleanup:
                    next_cleanup = loop.time() + CLEANUP_EVERY_S
                    await self._guarded(self.clean_up())
                try:
                    async with asyncio.timeout(ADDRESS_CHECK_S):
                        await self._stop.wait()
                except TimeoutError:
                    pass
        finally:
            await self._guarded(self.sign_off())

    async def _redis_time_ms(self) -> float:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                seconds, micros = await self.redis.time()
            return seconds * 1000 + micros / 1000
        except _FAULTS:
            return time.time() * 1000  # only for the record; the heartbeats' times are Redis's

    async def _guarded(self, step: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                await step
        except _FAULTS as exc:
            self.failures += 1
            log.warning("sbc membership step failed ingest_id=%s error=%s", self.ingest_id, exc)

    def _keys(self, ingest_id: str) -> list[str]:
        names = self.names
        return [names.sbc_alive(ingest_id), names.sbc_seen, names.sbc_details, names.sbc_cleaned]

    async def announce(self) -> None:
        payload = msgspec.json.encode(self.announcement()).decode()
        await ANNOUNCE.run(self.redis, self._keys(self.ingest_id), [self.ingest_id, payload, self.alive_ttl_ms])
        self.announced += 1

    async def sign_off(self) -> None:
        stopped = self.announcement(stopped_at_ms=int(await self._redis_time_ms()))
        payload = msgspec.json.encode(stopped).decode()
        await SIGN_OFF.run(self.redis, self._keys(self.ingest_id)[:3], [self.ingest_id, payload])
        log.info("sbc signed off ingest_id=%s", self.ingest_id)

    async def clean_up(self) -> None:
        """Every peer whose key lapsed a reply deadline ago: its reply stream and edge group removed."""
        seconds, micros = await self.redis.time()
        now_ms = seconds * 1000 + micros // 1000
        seen: Any = await self.redis.zrangebyscore(
            self.names.sbc_seen, "-inf", now_ms - self.gone_after_ms, withscores=True
        )
        for member, last_seen_ms in seen:
            peer = member.decode() if isinstance(member, bytes) else str(member)
            if peer == self.ingest_id:
                continue
            await self._clean_up(peer, now_ms - int(last_seen_ms))
            if now_ms - last_seen_ms > self.forget_after_ms:
                await self._forget(peer)

    async def _clean_up(self, peer: str, silent_ms: int) -> None:
        names = self.names
        keys = [names.sbc_alive(peer), names.sbc_seen, names.sbc_cleaned, names.replies(peer), names.commands]
        result: Any = await CLEAN_UP.run(self.redis, keys, [peer, self.gone_after_ms, edge_group(peer)])
        if int(result[0]) == 1:
            self.peers_cleaned += 1
            log.info(
                "sbc gone, cleaned up after it ingest_id=%s silent_ms=%d reply_stream_deleted=%d edge_group_gone=%d",
                peer,
                silent_ms,
                int(result[1]),
                int(result[2]),
            )

    async def _forget(self, peer: str) -> None:
        if await FORGET.run(self.redis, self._keys(peer), [peer, self.forget_after_ms]) == 1:
            self.peers_forgotten += 1
            log.info("sbc forgotten ingest_id=%s", peer)


@dataclass(frozen=True, slots=True)
class SbcStatus:
    """One SBC as `sbcs` shows it."""

    ingest_id: str
    state: str  # "live", "stopped" (a clean stop) or "dead" (its heartbeat lapsed)
    last_seen_ms: int
    now_ms: int
    announcement: SbcAnnouncement | None
    cleaned_at_ms: int | None  # when a peer removed its reply stream and edge group


async def read_sbcs(redis: Redis, names: StreamNames) -> list[SbcStatus]:
    """Every SBC that announced itself and is not forgotten yet, live ones first, most recently seen first."""
    seconds, micros = await redis.time()  # alone: a Redis Cluster client pipelines no TIME
    pipe = redis.pipeline(transaction=False)
    pipe.zrange(names.sbc_seen, 0, -1, withscores=True)
    pipe.hgetall(names.sbc_details)
    pipe.hgetall(names.sbc_cleaned)
    seen, details, cleaned = await pipe.execute()
    now_ms = seconds * 1000 + micros // 1000
    ids = [_text(member) for member, _ in seen]
    pipe = redis.pipeline(transaction=False)
    for ingest_id in ids:
        pipe.exists(names.sbc_alive(ingest_id))
    alive = await pipe.execute() if ids else []
    details_by_id = {_text(k): v for k, v in details.items()}
    cleaned_by_id = {_text(k): int(v) for k, v in cleaned.items()}
    out: list[SbcStatus] = []
    for (ingest_id, (_, last_seen)), is_alive in zip(zip(ids, seen, strict=True), alive, strict=True):
        announcement = _announcement(details_by_id.get(ingest_id))
        if is_alive:
            state = "live"
        elif announcement is not None and announcement.stopped_at_ms is not None:
            state = "stopped"
        else:
            state = "dead"
        status = SbcStatus(ingest_id, state, int(last_seen), now_ms, announcement, cleaned_by_id.get(ingest_id))
        out.append(status)
    out.sort(key=lambda s: (s.state != "live", -s.last_seen_ms, s.ingest_id))
    return out


def _announcement(raw: bytes | None) -> SbcAnnouncement | None:
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw, type=SbcAnnouncement)
    except msgspec.DecodeError:
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
