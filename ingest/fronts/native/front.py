"""The native SIP front: our own asyncio listeners on UDP, TCP, TLS, WS and WSS."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ingest.fronts.front import ClientAnswer, OutboundRequest, RequestHandler
from ingest.fronts.native.client import ClientTransactions
from ingest.fronts.native.dispatch import Dispatcher, FrontStats
from ingest.fronts.native.limits import ConnectionBound, FloodGuard, TrustedSources
from ingest.fronts.native.stream import StreamConnection, StreamLimits
from ingest.fronts.native.udp import UdpListener
from ingest.fronts.native.websocket import WebSocketListener
from ingest.locator import Hop, SipLocator
from ingest.sip import SipResponse
from runtime.errors import ConfigError
from runtime.settings import DEFAULT_TRUSTED_SOURCES, SipListen, SipSettings

log = logging.getLogger(__name__)

DRAIN_GRACE_S = 2.0


def _tls_context(cert: str | None, key: str | None) -> ssl.SSLContext:
    if not cert or not key:
        raise ValueError("tls and wss listeners need SIDECAR_TLS_CERT and SIDECAR_TLS_KEY")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def client_tls_context(verify: str, cert: str | None, key: str | None) -> ssl.SSLContext:
    """The context of outbound TLS (REGISTERs and pings to carriers), as SIDECAR_SIP_TLS_VERIFY says.

    `off` (the default): the carrier's certificate is not checked, so one that is self-signed still works; `system`:
    checked against the system's trust store and the gateway's name; a file: against the CA certificates in it.
    The listeners' certificate (SIDECAR_TLS_CERT / _KEY), when set, is presented to carriers that ask for one.
    """
    if verify == "off":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif verify == "system":
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=verify)
    if cert and key:
        context.load_cert_chain(cert, key)
    return context


def _advertised_host(host: str, public_address: str | None) -> str:
    if public_address:
        return public_address
    if host in ("0.0.0.0", "::"):
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"
    return host


UDP_BUFFER_BYTES = 8 * 1024 * 1024


def _grow_buffers(transport: object) -> None:
    """Bigger UDP socket buffers, so a burst of requests waits in the kernel instead of being dropped.

    SO_RCVBUFFORCE passes the system's cap when the process may (root); otherwise SO_RCVBUF gets
    what the cap (net.core.rmem_max) allows.
    """
    sock = transport.get_extra_info("socket")  # type: ignore[attr-defined]
    if sock is None:
        return
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, UDP_BUFFER_BYTES)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, UDP_BUFFER_BYTES)
            except OSError as exc:
                log.debug("udp buffer size left as it was error=%s", exc)


@dataclass(frozen=True, slots=True)
class SipAbuseLimits:
    """The per-source limits of the front (SipSettings' trusted sources, flood and connection limits)."""

    trusted_sources: tuple[str, ...] = DEFAULT_TRUSTED_SOURCES
    flood_max_per_s: int = 200
    message_deadline_s: float = 10.0
    max_connections_per_ip: int = 100


class NativeFront:
    """A SipFront over our own sockets. Enter to bind every listener; leave to drain and close."""

    def __init__(
        self,
        listen: Sequence[SipListen],
        *,
        public_address: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        max_message_bytes: int = 65536,
        idle_timeout_s: float = 600.0,
        reuse_port: bool = False,
        abuse: SipAbuseLimits | None = None,
        locator: SipLocator | None = None,
        tls_verify: str = "off",
    ) -> None:
        self.reuse_port = reuse_port
        self.listen = tuple(listen)
        self.public_address = public_address
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.max_message_bytes = max_message_bytes
        self.idle_timeout_s = idle_timeout_s
        self.tls_verify = tls_verify
        self._client_tls: ssl.SSLContext | None = None
        self.client = ClientTransactions(
            self._send_udp, self._local_host, self._local_port, self._open_stream, locator or SipLocator()
        )
        abuse = abuse or SipAbuseLimits()
        trusted = TrustedSources(abuse.trusted_sources)
        flood = FloodGuard(abuse.flood_max_per_s, trusted) if abuse.flood_max_per_s > 0 else None
        self.dispatcher = Dispatcher(max_message_bytes, self._on_response, flood)
        self.stream_limits = StreamLimits(
            idle_timeout_s=idle_timeout_s,
            max_message_bytes=max_message_bytes,
            message_deadline_s=abuse.message_deadline_s,
            bound=ConnectionBound(abuse.max_connections_per_ip, trusted),
        )
        # Connections the front opens itself (to carriers) do not count against their peer's per-IP limit.
        self.client_stream_limits = replace(self.stream_limits, bound=ConnectionBound(0, trusted))
        self._udp: list[UdpListener] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._websockets: list[WebSocketListener] = []
        self._connections: set[StreamConnection] = set()
        self._bound: list[tuple[str, str, int]] = []  # transport, advertised host, port
        self._ready = False

    @classmethod
    def from_settings(cls, settings: SipSettings, locator: SipLocator | None = None) -> NativeFront:
        return cls(
            settings.listen,
            public_address=settings.public_address,
            tls_cert=settings.tls_cert,
            tls_key=settings.tls_key,
            max_message_bytes=settings.max_message_bytes,
            idle_timeout_s=settings.idle_timeout_s,
            reuse_port=settings.reuse_port,
            abuse=SipAbuseLimits(
                trusted_sources=settings.trusted_sources,
                flood_max_per_s=settings.flood_max_per_s,
                message_deadline_s=settings.message_deadline_s,
                max_connections_per_ip=settings.max_connections_per_ip,
            ),
            locator=locator or SipLocator(settings.dns_servers),
            tls_verify=settings.tls_verify,
        )

    @property
    def sbc_address(self) -> str:
        return self.dispatcher.sbc_address

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def stats(self) -> FrontStats:
        return self.dispatcher.stats

    def bound(self, transport: str) -> tuple[str, int]:
        """The (host, port) a transport's first listener is bound to (ports resolved when 0 was asked)."""
        for name, host, port in self._bound:
            if name == transport:
                return host, port
        raise KeyError(transport)

    def set_handler(self, handler: RequestHandler) -> None:
        self.dispatcher.handler = handler

    async def send_request(self, request: OutboundRequest, timeout_s: float = 32.0) -> SipResponse:
        return await self.client.send(request, timeout_s)

    async def exchange(self, request: OutboundRequest, timeout_s: float = 32.0) -> ClientAnswer:
        """`send_request` with the address the response came from: the one the request was sent to."""
        return await self.client.exchange(request, timeout_s)

    async def __aenter__(self) -> NativeFront:
        try:
            for item in self.listen:
                try:
                    await self._start(item)
                except OSError as exc:  # a port in use, an address not on this host: the setting is wrong here
                    cause = exc.strerror or str(exc)
                    raise ConfigError("SIDECAR_SIP_LISTEN", f"{item} cannot be listened on: {cause}") from exc
        except BaseException:
            await self._close()
            raise
        self.dispatcher.sbc_address = ",".join(f"{t}/{h}:{p}" for t, h, p in self._bound)
        self._ready = True
        log.info("native SIP front listening sbc_address=%s", self.dispatcher.sbc_address)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._ready = False
        await self.dispatcher.drain(DRAIN_GRACE_S)
        await self._close()

    async def _start(self, item: SipListen) -> None:
        loop = asyncio.get_running_loop()
        advertised = _advertised_host(item.host, self.public_address)
        if item.transport == "udp":
            # SO_REUSEPORT (opt-in): several ingest processes share one SIP port; the kernel keeps each
            # source address on one socket, so retransmissions meet their transaction.
            _, protocol = await loop.create_datagram_endpoint(
                lambda: UdpListener(self.dispatcher), local_addr=(item.host, item.port), reuse_port=self.reuse_port
            )
            self._udp.append(protocol)
            _grow_buffers(protocol.transport)
            port = protocol.local_address[1]
        elif item.transport in ("tcp", "tls"):
            context = _tls_context(self.tls_cert, self.tls_key) if item.transport == "tls" else None
            server = await loop.create_server(
                lambda: StreamConnection(self.dispatcher, item.transport, self.stream_limits, self._connections),
                item.host,
                item.port,
                ssl=context,
                # A TLS handshake is bytes before a message: it gets the message deadline too.
                ssl_handshake_timeout=self.stream_limits.message_deadline_s if context is not None else None,
                reuse_port=self.reuse_port,
                reuse_address=True,
            )
            self._servers.append(server)
            port = server.sockets[0].getsockname()[1]
        else:
            context = _tls_context(self.tls_cert, self.tls_key) if item.transport == "wss" else None
            listener = WebSocketListener(
                self.dispatcher,
                item.transport,
                item.host,
                item.port,
                context,
                self.idle_timeout_s,
                self.max_message_bytes,
                self.stream_limits.bound,
            )
            await listener.start()
            self._websockets.append(listener)
            port = listener.bound_port
        self._bound.append((item.transport, advertised, port))

    async def _close(self) -> None:
        for protocol in self._udp:
            if protocol.transport is not None:
                protocol.transport.close()
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            connection.close()
        for server in self._servers:
            await server.wait_closed()
        for listener in self._websockets:
            await listener.close()
        self._udp.clear()
        self._servers.clear()
        self._websockets.clear()

    async def _open_stream(self, hop: Hop, on_lost: Callable[[StreamConnection], None]) -> StreamConnection:
        """A TCP or TLS connection to a carrier, from the listeners' address when they are bound to one."""
        loop = asyncio.get_running_loop()
        tls = hop.transport == "tls"
        if tls and self._client_tls is None:
            self._client_tls = client_tls_context(self.tls_verify, self.tls_cert, self.tls_key)
        _, connection = await loop.create_connection(
            lambda: StreamConnection(
                self.dispatcher, hop.transport, self.client_stream_limits, self._connections, on_lost
            ),
            hop.address,
            hop.port,
            ssl=self._client_tls if tls else None,
            server_hostname=hop.name if tls else None,
            ssl_handshake_timeout=self.stream_limits.message_deadline_s if tls else None,
            local_addr=self._source_address(hop),
        )
        return connection

    def _source_address(self, hop: Hop) -> tuple[str, int] | None:
        """(host, 0) of the listener of the hop's transport (else tcp's) when it is bound to one IPv4 address
        other than loopback: the carrier sees the connection come from the address the Via names."""
        for transport in (hop.transport, "tcp"):
            for item in self.listen:
                if item.transport == transport:
                    host = item.host
                    specific = host not in ("0.0.0.0", "::") and ":" not in host and not host.startswith("127.")
                    return (host, 0) if specific and ":" not in hop.address else None
        return None

    def _on_response(self, response: SipResponse) -> None:
        self.client.on_response(response)

    def _send_udp(self, payload: bytes, address: tuple[str, int]) -> None:
        if not self._udp:
            raise ConnectionError("no udp listener to send from")
        self._udp[0].sendto(payload, address)

    def _local_host(self, transport: str) -> str:
        try:
            return self.bound(transport)[0]
        except KeyError:
            return self._bound[0][1] if self._bound else "127.0.0.1"

    def _local_port(self, transport: str) -> int:
        try:
            return self.bound(transport)[1]
        except KeyError:
            return 5061 if transport == "tls" else 5060
