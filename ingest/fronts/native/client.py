"""Client transactions for requests the service sends (RFC 3261 17.1.2, non-INVITE).

The next hop is located with `ingest/locator.py` (SRV, then A records). Over UDP the request is retransmitted on
Timer E (T1 doubling to T2; T2 once a provisional arrives) until a final response or Timer F (64*T1) gives a
408. Over TCP and TLS it goes on a connection to the hop (the first of the located addresses that connects),
kept open and used again by later requests to the same hop: the digest retry and the refreshes of a
registration ride the connection its first REGISTER opened, as a carrier expects of a registered UA; Timer F
alone applies. What arrives on such a connection goes to the dispatcher like anything a listener receives
(responses to the client transactions, requests to the handler). A connection closes when idle
(`SIDECAR_SIP_IDLE_TIMEOUT_S`) or when the peer closes it; the next request opens another. Responses are matched
by the top Via branch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ingest.fronts.front import ClientAnswer, OutboundRequest
from ingest.fronts.native.stream import StreamConnection
from ingest.locator import Hop, SipLocator
from ingest.sip import SipParseError, SipRequest, SipResponse
from ingest.sip.tags import random_hex
from ingest.sip.uri import parse_uri

log = logging.getLogger(__name__)

T1_S = 0.5
T2_S = 4.0
TIMER_F_S = 64 * T1_S
STREAM_TRANSPORTS = ("tcp", "tls")

OpenStream = Callable[[Hop, Callable[[StreamConnection], None]], Awaitable[StreamConnection]]


@dataclass(frozen=True, slots=True)
class Destination:
    transport: str
    host: str
    port: int | None  # None: none in the URI (a hostname is then looked up with SRV)


def destination_of(request: OutboundRequest) -> Destination:
    """Where a request goes: its next hop, else its Request-URI (transport udp, or tls for sips)."""
    uri = parse_uri(request.next_hop or request.request_uri)
    transport = (uri.transport or ("tls" if uri.scheme == "sips" else "udp")).lower()
    return Destination(transport, uri.host.strip("[]"), uri.port)


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
        open_stream: OpenStream | None = None,
        locator: SipLocator | None = None,
        timer_f_s: float = TIMER_F_S,
    ) -> None:
        self._send_udp = send_udp
        self._local_host = local_host
        self._local_port = local_port
        self._open_stream = open_stream
        self.locator = locator or SipLocator()
        self.timer_f_s = timer_f_s
        self._pending: dict[str, asyncio.Future[SipResponse]] = {}
        self._provisional: set[str] = set()
        self._streams: dict[Hop, StreamConnection] = {}  # open connections to hops, used again
        self._opening: dict[Hop, asyncio.Lock] = {}
        self._carried_by: dict[str, StreamConnection] = {}  # branch → the connection its request went on

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
        return (await self.exchange(request, timeout_s)).response

    async def exchange(self, request: OutboundRequest, timeout_s: float | None = None) -> ClientAnswer:
        """The final response and the (transport, address, port) it answered from; source None for a 408 of
        Timer F. Raises `LocateError` when the next hop does not resolve, `ConnectionError` when no located
        address accepts a connection."""
        destination = destination_of(request)
        if destination.transport not in ("udp", *STREAM_TRANSPORTS):
            raise ValueError(f"outbound {destination.transport} is not supported by the native front")
        hops = await self.locator.hops(destination.host, destination.port, destination.transport)
        message, branch = self.build(request, destination)
        timeout_s = timeout_s or self.timer_f_s
        if destination.transport == "udp":
            hop = hops[0]
            response = await self._send_udp_transaction(message, branch, (hop.address, hop.port), timeout_s)
            if response is None:
                return ClientAnswer(timeout_response(message))
            return ClientAnswer(response, ("udp", hop.address, hop.port))
        return await self._send_stream(message, branch, hops, timeout_s)

    async def _send_udp_transaction(
        self, message: SipRequest, branch: str, address: tuple[str, int], timeout_s: float
    ) -> SipResponse | None:
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
                        return None  # the transaction ends: no copy goes out with the 408
                    interval = T2_S if branch in self._provisional else min(interval * 2, T2_S)
        finally:
            self._pending.pop(branch, None)
            self._provisional.discard(branch)

    async def _send_stream(
        self, message: SipRequest, branch: str, hops: Sequence[Hop], timeout_s: float
    ) -> ClientAnswer:
        data = message.serialize()
        try:
            async with asyncio.timeout(timeout_s):
                for attempt in range(2):
                    connection, hop, reused = await self._connection(hops)
                    future: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
                    self._pending[branch] = future
                    self._carried_by[branch] = connection
                    try:
                        connection.send(data)
                        response = await future
                    except ConnectionError:
                        if reused and attempt == 0:
                            continue  # the peer had closed the kept connection: once more on a new one
                        raise
                    return ClientAnswer(response, (hop.transport, hop.address, hop.port))
                raise AssertionError("unreachable")
        except TimeoutError:
            return ClientAnswer(timeout_response(message))
        finally:
            self._pending.pop(branch, None)
            self._carried_by.pop(branch, None)
            self._provisional.discard(branch)

    async def _connection(self, hops: Sequence[Hop]) -> tuple[StreamConnection, Hop, bool]:
        """An open connection to the first hop that has or accepts one: (connection, hop, whether kept)."""
        if self._open_stream is None:
            raise ConnectionError("this front cannot open stream connections")
        failures: list[str] = []
        for hop in hops:
            kept = self._streams.get(hop)
            if kept is not None and kept.transport is not None and not kept.transport.is_closing():
                return kept, hop, True
            lock = self._opening.setdefault(hop, asyncio.Lock())
            async with lock:  # two requests to one hop at once open one connection
                kept = self._streams.get(hop)
                if kept is not None and kept.transport is not None and not kept.transport.is_closing():
                    return kept, hop, True
                try:
                    connection = await self._open_stream(hop, self._stream_lost)
                except OSError as exc:
                    failures.append(f"{hop.address}:{hop.port} {exc.strerror or exc}")
                    log.info(
                        "outbound connection failed transport=%s to=%s:%s error=%s",
                        hop.transport,
                        hop.address,
                        hop.port,
                        exc,
                    )
                    continue
                self._streams[hop] = connection
                return connection, hop, False
        transport, name = (hops[0].transport, hops[0].name) if hops else ("?", "?")
        raise ConnectionError(f"cannot connect over {transport} to {name}: {'; '.join(failures)}")

    def _stream_lost(self, connection: StreamConnection) -> None:
        """A client connection closed: forgotten, and the requests waiting on it fail now, not at Timer F."""
        for hop, kept in list(self._streams.items()):
            if kept is connection:
                del self._streams[hop]
        for branch, carrier in list(self._carried_by.items()):
            future = self._pending.get(branch)
            if carrier is connection and future is not None and not future.done():
                future.set_exception(ConnectionError("connection closed before a final response"))

    def on_response(self, response: SipResponse) -> None:
        """Called by the listeners and client connections for every response received."""
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
