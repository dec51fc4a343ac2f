"""The reply path's ingest end: one reader of `replies:<ingest_id>` resolving waiters by correlation id.

Processors in the same process hand their replies over directly (`EventLog.attach_local`), after
their commit; the stream carries the replies of processors elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis

from events import Event, EventCodec, ReplyIssued
from runtime.eventlog import StreamReader
from runtime.faults import REDIS_FAULTS

log = logging.getLogger(__name__)

_FAULTS: tuple[type[BaseException], ...] = (*REDIS_FAULTS, TimeoutError)


REPLY_STREAM_TTL_S = 3600


class ReplyRouter:
    """A Worker: reads this instance's reply stream and hands each decision to its waiting request."""

    name = "replies"

    def __init__(
        self, redis: Redis, reader: StreamReader, codec: EventCodec, stream: str, block_ms: int = 1000
    ) -> None:
        self.redis = redis
        self.reader = reader
        self.codec = codec
        self.stream = stream
        self.block_ms = block_ms
        self.ready = asyncio.Event()
        self._waiters: dict[str, asyncio.Future[ReplyIssued]] = {}
        self._stopping = False
        self._last_id = "$"
        self.late_replies = 0
        self._next_keep_alive = 0.0

    def expect(self, correlation_id: str) -> asyncio.Future[ReplyIssued]:
        """Registers a waiter before the request is appended, so no reply can be missed."""
        future: asyncio.Future[ReplyIssued] = asyncio.get_running_loop().create_future()
        self._waiters[correlation_id] = future
        return future

    def forget(self, correlation_id: str) -> None:
        self._waiters.pop(correlation_id, None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        # Start from the stream's current end: replies are only for requests made from now on.
        info: Any = await self.redis.xrevrange(self.stream, count=1)
        self._last_id = info[0][0].decode() if info else "0-0"
        self.ready.set()
        try:
            await self._read_until_stopped()
        finally:
            self.reader.close()
            await self._remove_stream()

    async def _remove_stream(self) -> None:
        """This instance's reply stream dies with it (the next process gets a stream of its own)."""
        try:
            async with asyncio.timeout(2):
                await self.redis.delete(self.stream)
        except _FAULTS as exc:
            log.warning("reply stream left behind stream=%s error=%s", self.stream, exc)

    async def _keep_alive(self) -> None:
        """An expiry on the reply stream, renewed while running, so a crashed instance leaves nothing."""
        now = asyncio.get_running_loop().time()
        if now < self._next_keep_alive:
            return
        self._next_keep_alive = now + REPLY_STREAM_TTL_S / 4
        try:
            await self.redis.expire(self.stream, REPLY_STREAM_TTL_S)
        except REDIS_FAULTS as exc:
            log.warning("reply stream expiry not renewed error=%s", exc)

    async def _read_until_stopped(self) -> None:
        backoff = 0.05
        while not (self._stopping and not self._waiters):
            try:
                response = await self.reader.read(
                    {self.stream: self._last_id}, count=500, block_ms=100 if self._stopping else self.block_ms
                )
                backoff = 0.05
            except REDIS_FAULTS as exc:
                log.warning("reply stream read failed error=%s; retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            await self._keep_alive()
            if not response:
                if self._stopping:
                    return
                continue
            for _, (entry_id, fields) in response:
                self._last_id = entry_id.decode()
                self._deliver(fields)

    def _deliver(self, fields: dict[bytes, bytes]) -> None:
        try:
            reply = self.codec.decode(fields)
        except ValueError as exc:
            log.error("undecodable reply dropped error=%s", exc)
            return
        self.deliver(reply)

    def deliver(self, reply: Event) -> None:
        """Hands a decision to its waiting request: read from the stream, or from a consumer of this process."""
        if not isinstance(reply, ReplyIssued):
            log.error("unexpected event on reply stream type=%s", reply.TYPE)
            return
        future = self._waiters.pop(reply.correlation_id, None)
        if future is None or future.done():
            self.late_replies += 1
            return
        future.set_result(reply)
