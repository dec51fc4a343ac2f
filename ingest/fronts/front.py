"""The one interface both SIP fronts (native and drachtio) give the rest of ingest."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ingest.sip import SipRequest, SipResponse


@dataclass(frozen=True, slots=True)
class TransportFacts:
    """Where a request came from and where it arrived."""

    source_ip: str
    source_port: int
    transport: str  # udp, tcp, tls, ws, wss (lower-case)
    sbc_address: str  # drachtio's hostport format: "udp/ip:port,tcp/ip:port,..."
    private_sbc_address: str | None = None  # "ip:port" of the private TCP interface, if any


class IncomingRequest(Protocol):
    """A SIP request held open by a front until `respond` sends its final answer."""

    @property
    def message(self) -> SipRequest: ...

    @property
    def facts(self) -> TransportFacts: ...

    async def respond(
        self, status: int, reason: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> None: ...


RequestHandler = Callable[[IncomingRequest], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    """A request the service originates (REGISTER or OPTIONS to a carrier).

    `request_uri` is the Request-URI; `next_hop` is a SIP URI naming where to send it
    (`sip:host:port;transport=udp`), or None to send it to the Request-URI. The front fills
    in Via, Max-Forwards, CSeq, Call-ID (unless given), From tag and Content-Length.
    """

    method: str
    request_uri: str
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    next_hop: str | None = None


@dataclass(frozen=True, slots=True)
class ClientAnswer:
    """The final response to an `OutboundRequest`, and where it came from when the front knows it.

    `source` is (transport, address, port) of the peer that sent the response; None for a response
    the front made up itself (Timer F's 408) or when the front does not record it. `unanswered` are the
    located addresses the request went to before, in order, that gave no response at all (RFC 3263 4.3;
    the native front's, the drachtio front leaves that to drachtio-server and reports none).
    """

    response: SipResponse
    source: tuple[str, str, int] | None = None
    unanswered: tuple[tuple[str, str, int], ...] = ()


class SipFront(Protocol):
    """A SIP edge: listens (or connects to drachtio), hands requests to one handler, sends requests.

    Used as an async context manager: entering starts listening, leaving stops it.
    """

    @property
    def sbc_address(self) -> str: ...

    @property
    def ready(self) -> bool: ...

    def set_handler(self, handler: RequestHandler) -> None: ...

    async def send_request(self, request: OutboundRequest, timeout_s: float = 32.0) -> SipResponse: ...

    async def exchange(self, request: OutboundRequest, timeout_s: float = 32.0) -> ClientAnswer: ...

    async def __aenter__(self) -> SipFront: ...

    async def __aexit__(self, *exc_info: object) -> None: ...
