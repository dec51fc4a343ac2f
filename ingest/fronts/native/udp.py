"""The UDP listener: one datagram, one message; answers go back to the packet's source (RFC 3581)."""

from __future__ import annotations

import asyncio
import logging

from ingest.fronts.native.dispatch import Dispatcher
from ingest.fronts.native.transactions import TIMER_J_UDP_S, TransactionTable

log = logging.getLogger(__name__)


class UdpListener(asyncio.DatagramProtocol):
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.transactions = TransactionTable(timer_j_s=TIMER_J_UDP_S)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int] | tuple[str, int, int, int]) -> None:
        if len(data) < 4 or data in (b"\r\n\r\n", b"\r\n"):
            return  # RFC 5626 keep-alive
        source = (addr[0], addr[1])
        transport = self.transport

        def send(payload: bytes) -> None:
            if transport is not None and not transport.is_closing():
                transport.sendto(payload, addr)

        self.dispatcher.receive(data, "udp", source, send, self.transactions)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error ignored error=%s", exc)

    def sendto(self, payload: bytes, addr: tuple[str, int]) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("udp listener is closed")
        self.transport.sendto(payload, addr)

    @property
    def local_address(self) -> tuple[str, int]:
        assert self.transport is not None
        sockname = self.transport.get_extra_info("sockname")
        return sockname[0], sockname[1]
