"""A lean Redis connection for the event log's hot path: hiredis packs and parses, asyncio carries.

redis-py spends ~10 µs of Python per pipelined command (DESIGN 10); here a pipeline of commands
is packed by `hiredis.pack_command`, written in one call, and its replies are read by a
`hiredis.Reader` and handed back in order (~2 µs per command). One connection carries any
number of concurrent pipelines: each is written whole and Redis answers in order, so a FIFO of
waiters matches replies to callers. Blocking reads (XREADGROUP/XREAD with BLOCK) get a
connection of their own. Only the event log uses this; everything else keeps redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)

Command = Sequence[object]
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class LinkSettings:
    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None


class NotConnected(RedisConnectionError):
    """No connection to Redis could be made: the commands were never sent."""


class _Waiter:
    __slots__ = ("future", "remaining", "replies")

    def __init__(self, future: asyncio.Future[list[object]], count: int) -> None:
        self.future = future
        self.remaining = count
        self.replies: list[object] = []


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: collections.deque[_Waiter] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiters = self.waiters
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RedisConnectionError(f"protocol error: {exc}"))
                if self.transport is not None:
                    self.transport.close()
                return
            if reply is False:
                return
            if not waiters:
                log.error("reply without a waiter dropped")
                continue
            waiter = waiters[0]
            waiter.replies.append(reply)
            waiter.remaining -= 1
            if waiter.remaining == 0:
                waiters.popleft()
                if not waiter.future.done():
                    waiter.future.set_result(waiter.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        self._fail(self.lost)

    def _fail(self, error: Exception) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(error)


class RespLink:
    """One Redis connection, opened on first use and again after it is lost."""

    def __init__(self, settings: LinkSettings) -> None:
        self.settings = settings
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and self._protocol.lost is None:
                return self._protocol
            self._protocol = await self._open()
            return self._protocol

    async def _open(self) -> _Protocol:
        s = self.settings
        loop = asyncio.get_running_loop()
        setup: list[Command] = []
        if s.password:
            setup.append(("AUTH", s.username, s.password) if s.username else ("AUTH", s.password))
        if s.db:
            setup.append(("SELECT", s.db))
        protocol: _Protocol | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):  # connect and set-up, under one deadline
                _, protocol = await loop.create_connection(_Protocol, s.host, s.port, ssl=s.ssl_context)
                replies = await self._send(protocol, setup) if setup else []
            for reply in replies:
                if isinstance(reply, hiredis.ReplyError):
                    raise ResponseError(f"Redis refused the connection set-up: {reply}")
        except BaseException as exc:
            if protocol is not None and protocol.transport is not None:
                protocol.transport.close()  # a refused or cut-short set-up must not leave its socket behind
            if isinstance(exc, OSError | TimeoutError):
                raise NotConnected(f"cannot connect to Redis at {s.host}:{s.port}: {exc}") from exc
            raise
        return protocol

    @staticmethod
    def _send(protocol: _Protocol, commands: Sequence[Command]) -> asyncio.Future[list[object]]:
        if protocol.transport is None or protocol.lost is not None:
            raise NotConnected("not connected to Redis")
        future: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()
        protocol.waiters.append(_Waiter(future, len(commands)))
        protocol.transport.write(b"".join([hiredis.pack_command(tuple(c)) for c in commands]))  # type: ignore[arg-type]
        return future

    async def pipeline(self, commands: Sequence[Command]) -> list[object]:
        """Runs the commands in one write; replies in order (errors as hiredis.ReplyError values)."""
        if not commands:
            return []
        protocol = await self._connection()
        return await self._send(protocol, commands)

    async def transaction(self, commands: Sequence[Command], scripts: Sequence[str] = ()) -> list[object]:
        """MULTI, the commands, EXEC; returns EXEC's replies, raising if any command failed.

        `scripts` are the sources of the Lua scripts the commands call: each is loaded inside the
        same MULTI, every time. MULTI does not roll back, so a script Redis did not know (after a
        restart or a SCRIPT FLUSH) would fail its EVALSHA while the XACK beside it went through.
        """
        loads: list[Command] = [("SCRIPT", "LOAD", source) for source in scripts]
        replies = await self.pipeline([("MULTI",), *loads, *commands, ("EXEC",)])
        result = replies[-1]
        if isinstance(result, hiredis.ReplyError):
            queued_errors = [r for r in replies[1:-1] if isinstance(r, hiredis.ReplyError)]
            raise ResponseError(f"transaction aborted: {queued_errors[0] if queued_errors else result}")
        if result is None:
            raise ResponseError("transaction aborted")
        assert isinstance(result, list)
        for reply in result:
            if isinstance(reply, hiredis.ReplyError):
                raise ResponseError(f"command in transaction failed: {reply}")
        return result[len(loads) :]

    async def command(self, *args: object) -> object:
        reply = (await self.pipeline([args]))[0]
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
