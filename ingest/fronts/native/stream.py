"""TCP and TLS listeners: Content-Length framing, keep-alive pongs, idle timeout, per-connection limits."""

from __future__ import annotations

import asyncio
import logging

from ingest.fronts.native.dispatch import Dispatcher
from ingest.fronts.native.transactions import TransactionTable
from ingest.sip import SipParseError
from ingest.sip.framing import KEEPALIVE_PONG, KeepAlivePing, StreamFramer

log = logging.getLogger(__name__)

MAX_BUFFERED_OUTPUT = 1 << 20  # a peer that stops reading is cut off past this


class StreamConnection(asyncio.Protocol):
    """One accepted TCP or TLS connection."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        transport_name: str,
        idle_timeout_s: float,
        max_message_bytes: int,
        connections: set[StreamConnection],
    ) -> None:
        self.dispatcher = dispatcher
        self.transport_name = transport_name
        self.idle_timeout_s = idle_timeout_s
        self.framer = StreamFramer(max_message_bytes=max_message_bytes)
        # Reliable transport: no retransmissions, so a final answer need not be kept (Timer J = 0).
        self.transactions = TransactionTable(timer_j_s=0)
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        self.connections.add(self)
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()

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
