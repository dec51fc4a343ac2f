"""Client transactions for requests the service sends (RFC 3261 17.1.2, non-INVITE).

Over UDP the request is retransmitted on Timer E (T1 doubling to T2; T2 once a provisional
arrives) until a final response or Timer F (64*T1) gives a 408. Over TCP the request is sent on
a new connection and Timer F alone applies. Responses are matched by the top Via branch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ingest.fronts.front import OutboundRequest
from ingest.sip import SipParseError, SipRequest, SipResponse, parse_message
from ingest.sip.framing import StreamFramer
from ingest.sip.tags import random_hex
from ingest.sip.uri import parse_uri

log = logging.getLogger(__name__)

T1_S = 0.5
T2_S = 4.0
TIMER_F_S = 64 * T1_S


@dataclass(frozen=True, slots=True)
class Destination:
    transport: str
    host: str
    port: int


def destination_of(request: OutboundRequest) -> Destination:
    """Where a request goes: its next hop, else its Request-URI (port 5060, or 5061 for sips/tls)."""
    uri = parse_uri(request.next_hop or request.request_uri)
    transport = uri.transport or ("tls" if uri.scheme == "sips" else "udp")
    default_port = 5061 if transport == "tls" else 5060
    return Destination(transport, uri.host.strip("[]"), uri.port or default_port)


def timeout_response(request: SipRequest) -> SipResponse:
    """The 408 a client transaction reports when Timer F fires."""
    response = SipResponse(408, "Request Timeout")
    for name in ("via", "from", "to", "call-id", "cseq"):
        value = request.headers.get(name)
        if value is not None:
            response.headers.add(name, value)
    return response


class ClientTransactions:
    """Sends requests and resolves each with its final response (or a 408)."""

    def __init__(
        self,
        send_udp: Callable[[bytes, tuple[str, int]], None],
        local_host: Callable[[str], str],
        local_port: Callable[[str], int],
        timer_f_s: float = TIMER_F_S,
    ) -> None:
        self._send_udp = send_udp
        self._local_host = local_host
        self._local_port = local_port
        self.timer_f_s = timer_f_s
        self._pending: dict[str, asyncio.Future[SipResponse]] = {}
        self._provisional: set[str] = set()

    def build(self, request: OutboundRequest, destination: Destination) -> tuple[SipRequest, str]:
        branch = f"z9hG4bK{random_hex(8)}"
        host, port = self._local_host(destination.transport), self._local_port(destination.transport)
        sent_by = f"[{host}]" if ":" in host else host
        message = SipRequest(request.method.upper(), request.request_uri)
        headers = message.headers
        headers.add("Via", f"SIP/2.0/{destination.transport.upper()} {sent_by}:{port};branch={branch};rport")
        headers.add("Max-Forwards", "70")
        given = {name.lower() for name, _ in request.headers}
        for name, value in request.headers:
            headers.add(name, value)
        if "call-id" not in given:
            headers.add("Call-ID", random_hex(12))
        if "cseq" not in given:
            headers.add("CSeq", f"1 {request.method.upper()}")
        from_value = headers.get("from")
        if from_value is not None and ";tag=" not in from_value:
            headers.set("From", f"{from_value};tag={random_hex(5)}")
        message.body = request.body
        return message, branch

    async def send(self, request: OutboundRequest, timeout_s: float | None = None) -> SipResponse:
        destination = destination_of(request)
        address = await self._resolve(destination)
        message, branch = self.build(request, destination)
        if destination.transport == "udp":
            return await self._send_udp_transaction(message, branch, address, timeout_s or self.timer_f_s)
        if destination.transport == "tcp":
            return await self._send_tcp(message, address, timeout_s or self.timer_f_s)
        raise ValueError(f"outbound {destination.transport} is not supported by the native front")

    async def _resolve(self, destination: Destination) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(destination.host, destination.port, type=2)  # SOCK_DGRAM
        if not infos:
            raise OSError(f"cannot resolve {destination.host}")
        sockaddr = infos[0][4]
        return str(sockaddr[0]), int(sockaddr[1])

    async def _send_udp_transaction(
        self, message: SipRequest, branch: str, address: tuple[str, int], timeout_s: float
    ) -> SipResponse:
        data = message.serialize()
        future: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        self._pending[branch] = future
        interval = T1_S
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            while True:
                self._send_udp(data, address)
                remaining = deadline - asyncio.get_running_loop().time()
                timer_f_first = remaining <= interval  # Timer F fires before the next Timer E
                try:
                    return await asyncio.wait_for(asyncio.shield(future), max(0.0, min(interval, remaining)))
                except TimeoutError:
                    if timer_f_first:
                        return timeout_response(message)  # the transaction ends: no copy goes out with the 408
                    interval = T2_S if branch in self._provisional else min(interval * 2, T2_S)
        finally:
            self._pending.pop(branch, None)
            self._provisional.discard(branch)

    async def _send_tcp(self, message: SipRequest, address: tuple[str, int], timeout_s: float) -> SipResponse:
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(address[0], address[1])
                try:
                    writer.write(message.serialize())
                    await writer.drain()
                    framer = StreamFramer()
                    while True:
                        chunk = await reader.read(65536)
                        if not chunk:
                            raise ConnectionError("connection closed before a final response")
                        for frame in framer.feed(chunk):
                            if not isinstance(frame, bytes):
                                continue

                            response = parse_message(frame)
                            if isinstance(response, SipResponse) and response.status >= 200:
                                return response
                finally:
                    writer.close()
        except TimeoutError:
            return timeout_response(message)

    def on_response(self, response: SipResponse) -> None:
        """Called by the listeners for every response received."""
        try:
            branch = response.top_via.branch
        except SipParseError:
            return
        if branch is None:
            return
        future = self._pending.get(branch)
        if future is None or future.done():
            return
        if response.status < 200:
            self._provisional.add(branch)
            return
        future.set_result(response)
