"""TCP and TLS connections: Content-Length framing, keep-alive pongs, idle timeout, per-connection limits.

Accepted by the listeners, or opened by the client transactions to send a request (ingest/fronts/native/client.py):
either way what arrives goes to the dispatcher, responses included, which hands them to the client transactions.

Two guards against connections held open for nothing: at most `ConnectionBound.max_per_ip` at once per source
IP (one over is aborted as it is accepted), and a message begun must be complete within `message_deadline_s`
of its first byte (a client dribbling a message byte by byte is cut off then, whatever the idle timeout).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ingest.fronts.native.dispatch import Dispatcher
from ingest.fronts.native.limits import ConnectionBound
from ingest.fronts.native.transactions import TransactionTable
from ingest.sip import SipParseError
from ingest.sip.framing import KEEPALIVE_PONG, KeepAlivePing, StreamFramer

log = logging.getLogger(__name__)

MAX_BUFFERED_OUTPUT = 1 << 20  # a peer that stops reading is cut off past this
_CRLF = b"\r\n"


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """What bounds each stream connection: idle time, message size and time, connections per source."""

    idle_timeout_s: float
    max_message_bytes: int
    message_deadline_s: float
    bound: ConnectionBound


class StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection, accepted or opened."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        transport_name: str,
        limits: StreamLimits,
        connections: set[StreamConnection],
        on_lost: Callable[[StreamConnection], None] | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.on_lost = on_lost  # told when the connection closes (the client fails what it waits for on it)
        self.transport_name = transport_name
        self.limits = limits
        self.idle_timeout_s = limits.idle_timeout_s
        self.framer = StreamFramer(max_message_bytes=limits.max_message_bytes)
        # Reliable transport: no retransmissions, so a final answer need not be kept (Timer J = 0).
        self.transactions = TransactionTable(timer_j_s=0)
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self._idle: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None  # set while a message is begun and not complete
        self._counted = False  # whether the connection bound counted this connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        if not self.limits.bound.acquire(self.peer[0]):
            self.dispatcher.stats.connections_refused += 1
            transport.abort()  # type: ignore[attr-defined]
            return
        self._counted = True
        self.connections.add(self)
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self._counted:
            self._counted = False
            self.limits.bound.release(self.peer[0])
        if self._idle is not None:
            self._idle.cancel()
        if self._deadline is not None:
            self._deadline.cancel()
        if self.on_lost is not None:
            self.on_lost(self)

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(self.idle_timeout_s, self._idle_close)

    def _idle_close(self) -> None:
        log.debug("closing idle connection peer=%s:%s", *self.peer)
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def send(self, payload: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionError("connection closed")
        if transport.get_write_buffer_size() > MAX_BUFFERED_OUTPUT:
            log.warning("peer not reading, closing peer=%s:%s", *self.peer)
            transport.abort()
            return
        transport.write(payload)

    def data_received(self, data: bytes) -> None:
        self._touch()
        try:
            frames = self.framer.feed(data)
        except SipParseError as exc:
            self.dispatcher.stats.dropped_unparseable += 1
            log.info("closing connection with unframeable input peer=%s:%s error=%s", *self.peer, exc)
            self.close()
            return
        for frame in frames:
            if isinstance(frame, KeepAlivePing):
                self.send(KEEPALIVE_PONG)
                continue
            self.dispatcher.receive(frame, self.transport_name, self.peer, self.send, self.transactions)
        self._watch_deadline(data, completed=bool(frames))

    def _watch_deadline(self, data: bytes, *, completed: bool) -> None:
        """Starts the message deadline at a message's first byte, stops it when no message is left begun.

        A few CR/LF bytes alone (a keep-alive ping in the making, a single-CRLF keep-alive) begin no message.
        """
        pending = self.framer.buffered_bytes
        if pending == 0 or (pending < 4 and not data.strip(_CRLF)):
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            return
        if self._deadline is not None and not completed:
            return  # the same message, still coming
        if self._deadline is not None:
            self._deadline.cancel()
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self.limits.message_deadline_s, self._deadline_close)

    def _deadline_close(self) -> None:
        self._deadline = None
        self.dispatcher.stats.connections_timed_out += 1
        log.debug(
            "closing connection: message not complete in time peer=%s:%s buffered=%d deadline_s=%s",
            *self.peer,
            self.framer.buffered_bytes,
            self.limits.message_deadline_s,
        )
        if self.transport is not None:
            self.transport.abort()
