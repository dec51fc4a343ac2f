"""Client transactions for requests the service sends (RFC 3261 17.1.2, non-INVITE).

The next hop is located with `ingest/locator.py` (SRV, then A records) and the located addresses are tried in
order (RFC 3263 4.3): a request that gets no response at all from one address (nothing before its time is up,
a refused connection, a failed TLS handshake, a connection closed before the answer) is sent again to the next
one as a new transaction (a new Via branch, everything else the same). Any response ends the search, a 503
included, and a provisional one gives that address the rest of the time. The time is the request's timeout
(Timer F, or what the caller gives), shared: each address but the last gets an equal share of what remains
with those after it, at least `HOP_FLOOR_S`, and the last gets all that remains; so the request as a whole
never outlasts its timeout, and a single address has all of it, as before.

Over UDP the request is retransmitted on Timer E (T1 doubling to T2; T2 once a provisional arrives) until a
final response or the end of its time, which gives a 408 when no address answered. Over TCP and TLS it goes on
a connection to the hop, kept open and used again by later requests to the same hop: the digest retry and the
refreshes of a registration ride the connection its first REGISTER opened, as a carrier expects of a registered
UA; Timer F alone applies. What arrives on such a connection goes to the dispatcher like anything a listener
receives (responses to the client transactions, requests to the handler). A connection closes when idle
(`SIDECAR_SIP_IDLE_TIMEOUT_S`) or when the peer closes it; the next request opens another. Responses are matched
by the top Via branch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
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
HOP_FLOOR_S = 8 * T1_S  # an address before the last is given at least this: four copies over UDP

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


def hop_share_s(remaining_s: float, hops_left: int) -> float:
    """How long the next of `hops_left` addresses may take of the `remaining_s` of a request's time: an equal
    share with the addresses after it, at least `HOP_FLOOR_S`, never more than remains; the last one, all."""
    if hops_left <= 1:
        return remaining_s
    return min(remaining_s, max(remaining_s / hops_left, HOP_FLOOR_S))


def via_value(transport: str, host: str, port: int, branch: str) -> str:
    sent_by = f"[{host}]" if ":" in host else host
    return f"SIP/2.0/{transport.upper()} {sent_by}:{port};branch={branch};rport"


def rebranched(message: SipRequest, branch: str) -> tuple[SipRequest, str]:
    """The same request as a new transaction (RFC 3263 4.3): a new Via branch, every other byte the same."""
    new_branch = f"z9hG4bK{random_hex(8)}"
    headers = message.headers.copy()
    headers.set("Via", (headers.get("via") or "").replace(f";branch={branch};", f";branch={new_branch};", 1))
    return SipRequest(message.method, message.uri, headers, message.body), new_branch


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
        message = SipRequest(request.method.upper(), request.request_uri)
        headers = message.headers
        headers.add("Via", via_value(destination.transport, host, port, branch))
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
        """The final response and the (transport, address, port) it answered from, with the addresses tried
        before it that gave no response at all; source None for the 408 when no final response came in
        `timeout_s`. Raises `LocateError` when the next hop does not resolve, `ConnectionError` when the
        request could be sent to no located address (each one's failure in words)."""
        destination = destination_of(request)
        if destination.transport not in ("udp", *STREAM_TRANSPORTS):
            raise ValueError(f"outbound {destination.transport} is not supported by the native front")
        hops = await self.locator.hops(destination.host, destination.port, destination.transport)
        message, branch = self.build(request, destination)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout_s or self.timer_f_s)
        unanswered: list[tuple[str, str, int]] = []
        failures: list[str] = []
        for index, hop in enumerate(hops):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if index:  # RFC 3263 4.3: the same request as a new transaction, a new branch
                message, branch = rebranched(message, branch)
            started = loop.time()
            failure = None
            try:
                response = await self._transaction(
                    message, branch, hop, started + hop_share_s(remaining, len(hops) - index), deadline
                )
            except OSError as exc:  # a refused or closed connection, a TLS failure, nothing to send from
                response, failure = None, f"{hop.address}:{hop.port} {exc.strerror or exc}"
            finally:
                heard = branch in self._provisional
                self._provisional.discard(branch)
            if response is not None:
                return ClientAnswer(response, (hop.transport, hop.address, hop.port), tuple(unanswered))
            if failure is not None:
                failures.append(failure)
            elif not heard:
                unanswered.append((hop.transport, hop.address, hop.port))
            after = hops[index + 1] if index + 1 < len(hops) and not heard else None
            log.log(
                logging.INFO if failure is not None or after is not None else logging.DEBUG,  # a 408 says the rest
                "outbound request without a final response method=%s call_id=%s to=%s:%s transport=%s"
                " after_s=%.1f error=%s provisional=%s next=%s",
                message.method,
                message.call_id,
                hop.address,
                hop.port,
                hop.transport,
                loop.time() - started,
                failure or "none",
                heard,
                f"{after.address}:{after.port}" if after is not None else "none",
            )
            if heard:
                break  # the hop is there and working on it: its silence since is no reason to go elsewhere
        if unanswered or not failures:
            return ClientAnswer(timeout_response(message), None, tuple(unanswered))
        verb = "send" if destination.transport == "udp" else "connect"
        raise ConnectionError(f"cannot {verb} over {destination.transport} to {hops[0].name}: {'; '.join(failures)}")

    async def _transaction(
        self, message: SipRequest, branch: str, hop: Hop, hop_deadline: float, deadline: float
    ) -> SipResponse | None:
        if hop.transport == "udp":
            return await self._send_udp_transaction(message, branch, hop, hop_deadline, deadline)
        return await self._send_stream(message, branch, hop, hop_deadline, deadline)

    async def _send_udp_transaction(
        self, message: SipRequest, branch: str, hop: Hop, hop_deadline: float, deadline: float
    ) -> SipResponse | None:
        """The final response to one UDP transaction, or None when the hop gave none by `hop_deadline` (by
        `deadline` once it sent a provisional one). Copies go out on Timer E; none when the transaction ends."""
        data = message.serialize()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SipResponse] = loop.create_future()
        self._pending[branch] = future
        interval = T1_S
        next_copy_at = loop.time()
        try:
            while True:
                now = loop.time()
                ends_at = deadline if branch in self._provisional else hop_deadline
                if now >= ends_at:
                    return None  # Timer F, or the hop's share of it: no copy goes out with the end
                if now >= next_copy_at:
                    self._send_udp(data, (hop.address, hop.port))
                    next_copy_at = now + (T2_S if branch in self._provisional else interval)
                    interval = min(interval * 2, T2_S)
                try:
                    return await asyncio.wait_for(asyncio.shield(future), min(next_copy_at, ends_at) - now)
                except TimeoutError:
                    continue
        finally:
            self._pending.pop(branch, None)

    async def _send_stream(
        self, message: SipRequest, branch: str, hop: Hop, hop_deadline: float, deadline: float
    ) -> SipResponse | None:
        """The final response over a connection to the hop, or None when none came by `hop_deadline` (by
        `deadline` once a provisional one came). A connection that is refused, fails its TLS handshake, is not
        made by `hop_deadline`, or closes before the final response raises `ConnectionError` (an `OSError`)."""
        data = message.serialize()
        loop = asyncio.get_running_loop()
        share_s = hop_deadline - loop.time()
        try:
            for attempt in range(2):
                try:
                    async with asyncio.timeout_at(hop_deadline):
                        connection, reused = await self._connection(hop)
                except TimeoutError as exc:
                    raise ConnectionError(f"no connection within {share_s:.1f}s") from exc
                future: asyncio.Future[SipResponse] = loop.create_future()
                self._pending[branch] = future
                self._carried_by[branch] = connection
                try:
                    connection.send(data)
                    while True:
                        ends_at = deadline if branch in self._provisional else hop_deadline
                        if loop.time() >= ends_at:
                            return None
                        try:
                            return await asyncio.wait_for(asyncio.shield(future), ends_at - loop.time())
                        except TimeoutError:
                            continue
                except ConnectionError:
                    if reused and attempt == 0:
                        continue  # the peer had closed the kept connection: once more on a new one
                    raise
            raise AssertionError("unreachable")
        finally:
            self._pending.pop(branch, None)
            self._carried_by.pop(branch, None)

    async def _connection(self, hop: Hop) -> tuple[StreamConnection, bool]:
        """An open connection to the hop: (connection, whether it was kept from an earlier request)."""
        if self._open_stream is None:
            raise ConnectionError("this front cannot open stream connections")
        kept = self._streams.get(hop)
        if kept is not None and kept.transport is not None and not kept.transport.is_closing():
            return kept, True
        lock = self._opening.setdefault(hop, asyncio.Lock())
        async with lock:  # two requests to one hop at once open one connection
            kept = self._streams.get(hop)
            if kept is not None and kept.transport is not None and not kept.transport.is_closing():
                return kept, True
            connection = await self._open_stream(hop, self._stream_lost)
            self._streams[hop] = connection
            return connection, False

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
