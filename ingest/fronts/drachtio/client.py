"""`DrachtioFront`: the SIP front that is a client of drachtio-server's control connection (inbound mode).

One supervisor task owns the connection: it connects, authenticates, routes `register` and
`options`, then reads frames and pings until the link dies, and reconnects: at once when the lost
link had served, with capped exponential backoff otherwise. A handler task lives until its request
is answered, that is until the answer's frame is written; drachtio's OK or NOK for it is matched by
the link. Callers of `send_request` write frames and wait on futures that the supervisor resolves.
All tasks live in a TaskGroup owned by the async context manager.

A lost link costs one log line (with the requests it cut off), never one per request. Requests it
had delivered keep their handlers; their answers go out on the next link (see `LateAnswers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Protocol

from ingest.fronts.drachtio.answers import LateAnswers
from ingest.fronts.drachtio.errors import (
    DrachtioAuthenticationError,
    DrachtioCommandError,
    DrachtioConnectionError,
    DrachtioError,
)
from ingest.fronts.drachtio.framing import FrameFormatError
from ingest.fronts.drachtio.hostports import (
    PublicSipAddresses,
    parse_network_cidrs,
    private_sip_address,
    public_sip_addresses,
)
from ingest.fronts.drachtio.link import REFUSALS_PER_LOG_LINE, DrachtioStats, Link
from ingest.fronts.drachtio.messages import (
    CommandReply,
    ServerMessage,
    SipDelivery,
    authenticate_payload,
    new_message_id,
    ping_payload,
    request_payload,
    route_payload,
    server_version_at_least,
)
from ingest.fronts.drachtio.render import render_request, render_response, salvage_response, timeout_response
from ingest.fronts.drachtio.request import DrachtioRequest, request_problem
from ingest.fronts.front import ClientAnswer, OutboundRequest, RequestHandler, TransportFacts
from ingest.sip import SipParseError, SipRequest, SipResponse, parse_message

if TYPE_CHECKING:
    from typing import Self

log = logging.getLogger(__name__)

ROUTED_VERBS = ("register", "options")
PING_MIN_SERVER_VERSION = (0, 8, 2)
# A last-resort bound on memory only: the overload policy is Ingest's (SIDECAR_MAX_PENDING sheds REGISTERs
# with Retry-After and never heartbeats), and it must act long before this refuses everything.
MAX_IN_FLIGHT_REQUESTS = 20_000
SHUTDOWN_GRACE_S = 5.0  # how long leaving the context waits for handlers still answering


class RevealsSecret(Protocol):
    """A masked secret (the settings' `Secret`): the plain text only comes out of `reveal()`."""

    def reveal(self) -> str: ...


class DrachtioFront:
    """A `SipFront` over drachtio-server's control protocol (DRACHTIO.md), inbound mode.

    `host`/`port` are drachtio's admin address (DRACHTIO_HOST/DRACHTIO_PORT), `secret` its shared
    secret (a str or a masked settings `Secret`), `network_cidrs` the JAMBONES_NETWORK_CIDR parts that
    pick the private TCP address. A link that was ready for `reconnect_initial_s` or more is
    replaced at once when it goes down; other attempts wait `reconnect_initial_s`, doubling up to
    `reconnect_max_s`. Every message to drachtio waits at most `request_timeout_s` for its reply
    (an answer's confirmation not waited for is counted unconfirmed after that long).
    With a server of v0.8.2 or later a `ping` goes out every `ping_interval_s`; a ping still
    unanswered at the next one drops the link.

    Entering the context starts connecting and returns at once; `wait_ready` waits for the link.
    """

    def __init__(
        self,
        host: str,
        port: int,
        secret: str | RevealsSecret,
        *,
        network_cidrs: Iterable[str],
        reconnect_initial_s: float = 0.25,
        reconnect_max_s: float = 30.0,
        request_timeout_s: float = 5.0,
        ping_interval_s: float = 30.0,
    ) -> None:
        self._host = host
        self._port = port
        self._secret = secret
        self._networks = parse_network_cidrs(network_cidrs)
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._request_timeout_s = request_timeout_s
        self._ping_interval_s = ping_interval_s
        self.stats = DrachtioStats()
        self._late = LateAnswers(self.stats, MAX_IN_FLIGHT_REQUESTS)
        self._handler: RequestHandler | None = None
        self._link: Link | None = None
        self._ready = asyncio.Event()
        self._hostport = ""
        self._private_sbc_address: str | None = None
        self._server_version = ""
        self._tasks: asyncio.TaskGroup | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._closed = False

    def __repr__(self) -> str:
        return f"DrachtioFront({self._host}:{self._port}, ready={self.ready})"

    # -- the SipFront interface -------------------------------------------------------------

    @property
    def sbc_address(self) -> str:
        """drachtio's `hostport` string from the last successful authenticate ("" before that)."""
        return self._hostport

    @property
    def private_sbc_address(self) -> str | None:
        """`ip:port` of the last tcp entry of `localHostports` inside `network_cidrs`, or None."""
        return self._private_sbc_address

    @property
    def public_addresses(self) -> PublicSipAddresses:
        """udp/tls/wss `ip:port` from `hostport` (SPEC 1.2; tls defaults to `<udp ip>:5061`)."""
        return public_sip_addresses(self._hostport)

    @property
    def server_version(self) -> str:
        return self._server_version

    @property
    def ready(self) -> bool:
        """True while the connection is authenticated and both routes are in place."""
        return self._ready.is_set()

    @property
    def answers_pending(self) -> int:
        """Answers written on the current link whose OK/NOK from drachtio has not come yet."""
        link = self._link
        return link.answers_pending if link is not None else 0

    def set_handler(self, handler: RequestHandler) -> None:
        self._handler = handler

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until `ready`; TimeoutError after `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            await self._ready.wait()

    async def send_request(self, request: OutboundRequest, timeout_s: float = 32.0) -> SipResponse:
        """Send a new out-of-dialog request and return its final response (see `exchange`)."""
        return (await self.exchange(request, timeout_s)).response

    async def exchange(self, request: OutboundRequest, timeout_s: float = 32.0) -> ClientAnswer:
        """Send a new out-of-dialog request; its final response (1xx are skipped) and where it came from.

        drachtio fills in Via, Max-Forwards, Call-ID, CSeq and the From tag unless given;
        `request.next_hop` goes in the outbound-proxy field. When no final response arrives within
        `timeout_s` a 408 Request Timeout made up here is returned (with no source), just as drachtio's
        own Timer F 408 would be. Raises DrachtioConnectionError when there is no connection or it is lost
        before the answer, DrachtioCommandError when drachtio refuses the request (NOK, e.g.
        `invalid request-uri`), FrameTooLargeError when the request would not fit a frame.
        """
        link = self._current_link()
        sip = render_request(request)
        message_id = new_message_id()
        payload = request_payload(message_id, sip, request.next_hop)
        try:
            async with asyncio.timeout(timeout_s):
                reply = await link.command(message_id, payload, request.method, opens_transaction=True)
                transaction_id = reply.field(10)
                if not transaction_id:
                    raise DrachtioError(f"drachtio accepted the {request.method} without a transaction id")
                return await link.final_response(transaction_id)
        except TimeoutError:
            log.info(
                "drachtio request timed out method=%s uri=%s timeout_s=%s",
                request.method,
                request.request_uri,
                timeout_s,
            )
            return ClientAnswer(timeout_response(request))

    async def __aenter__(self) -> Self:
        if self._tasks is not None or self._closed:
            raise RuntimeError("a DrachtioFront can be entered only once")
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._supervisor = self._tasks.create_task(self._maintain_link(), name=f"drachtio {self._host}:{self._port}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Refuse new requests, give handlers `SHUTDOWN_GRACE_S` to answer, drop the link. Idempotent."""
        if self._closed or self._tasks is None:
            self._closed = True
            return
        self._closed = self._closing = True
        tasks = self._tasks
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_GRACE_S):
                    await self._idle.wait()
        finally:
            for task in (*self._handlers, self._supervisor):
                if task is not None:
                    task.cancel()
            await tasks.__aexit__(None, None, None)
            self._ready.clear()
            lost = self._late.close()
            log.info("drachtio front closed host=%s port=%d answers_lost=%d", self._host, self._port, lost)

    # -- the connection ---------------------------------------------------------------------

    async def _maintain_link(self) -> None:
        delay_s = self._reconnect_initial_s
        first = True
        while True:
            if not first:
                self.stats.reconnects += 1
            first = False
            served_s = await self._run_link()
            if served_s >= self._reconnect_initial_s:
                # it served: replace it now (drachtio answers 503 while no app is routed); a link that
                # drops as soon as it is ready waits out the backoff instead of spinning
                delay_s = self._reconnect_initial_s
                continue
            log.debug("drachtio reconnect host=%s port=%d in_s=%.2f", self._host, self._port, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, self._reconnect_max_s)

    async def _run_link(self) -> float:
        """One connection's life: connect, handshake, serve. Returns how long it was ready (0.0: never)."""
        loop = asyncio.get_running_loop()
        link: Link | None = None
        error: BaseException | None = None
        ready_at: float | None = None
        cut_off = unconfirmed = 0
        try:
            link = await Link.open(self._host, self._port, self.stats, self._request_timeout_s)
            await self._handshake(link)
            ready_at = loop.time()
            self._go_ready(link)
            await self._serve(link)
        except DrachtioAuthenticationError as exc:
            log.error(
                "drachtio refused the secret host=%s port=%d reason=%r: check DRACHTIO_SECRET",
                self._host,
                self._port,
                exc.reason,
            )
        except (OSError, TimeoutError, FrameFormatError, DrachtioError) as exc:
            error = exc
        except Exception as exc:
            log.exception("drachtio link failed unexpectedly host=%s port=%d", self._host, self._port)
            error = exc
        finally:
            self._ready.clear()
            if link is not None:
                self._link = None
                self._late.link_down()
                cut_off = link.requests_open
                unconfirmed = link.close(DrachtioConnectionError("drachtio connection lost"))
        if ready_at is None:
            if error is not None:
                log.warning("drachtio link down host=%s port=%d error=%r", self._host, self._port, error)
            return 0.0
        self._count_loss(error, cut_off, unconfirmed)
        return loop.time() - ready_at

    def _count_loss(self, error: BaseException | None, cut_off: int, unconfirmed: int) -> None:
        """The one line (and the counters) of a link that went down after it was ready."""
        self.stats.links_lost += 1
        self.stats.requests_cut_off += cut_off
        discarded = False
        if isinstance(error, FrameFormatError):
            self.stats.streams_corrupt += 1
            discarded = error.discarded
        log.warning(
            "drachtio link lost host=%s port=%d error=%r requests_cut_off=%d answers_unconfirmed=%d "
            "corrupt_frame_discarded=%s: reconnecting",
            self._host,
            self._port,
            error,
            cut_off,
            unconfirmed,
            discarded,
        )

    async def _handshake(self, link: Link) -> None:
        secret = self._secret if isinstance(self._secret, str) else self._secret.reveal()
        message_id = new_message_id()
        reply = await self._exchange(link, message_id, authenticate_payload(message_id, secret))
        if not reply.ok:
            raise DrachtioAuthenticationError("authenticate", reply.status, reply.reason)
        link.hostport, link.server_version, link.local_hostports = (
            reply.field(4),
            reply.field(5),
            reply.field(6),
        )
        link.private_sbc_address = private_sip_address(link.local_hostports, self._networks)
        for verb in ROUTED_VERBS:
            message_id = new_message_id()
            reply = await self._exchange(link, message_id, route_payload(message_id, verb))
            if not reply.ok:
                raise DrachtioCommandError(f"route {verb}", reply.status, reply.reason)
        link.routed = True

    def _go_ready(self, link: Link) -> None:
        self._link = link
        self._hostport = link.hostport
        self._private_sbc_address = link.private_sbc_address
        self._server_version = link.server_version
        self._ready.set()
        log.info(
            "drachtio ready host=%s port=%d version=%s hostport=%s private_sbc_address=%s routes=%s",
            self._host,
            self._port,
            link.server_version,
            link.hostport,
            link.private_sbc_address,
            ",".join(ROUTED_VERBS),
        )
        self._late.link_up(link)

    async def _exchange(self, link: Link, message_id: str, payload: bytes) -> CommandReply:
        """Send a message and read frames (acting on them all) until its reply; handshake only."""
        future = link.expect_reply(message_id)
        try:
            async with asyncio.timeout(self._request_timeout_s):
                await link.write(payload)
                while not future.done():
                    await link.read(partial(self._dispatch, link))
            return future.result()
        finally:
            future.cancel()

    async def _serve(self, link: Link) -> None:
        """Read and dispatch frames until the link dies; ping on schedule when the server can pong."""
        pinging = server_version_at_least(link.server_version, PING_MIN_SERVER_VERSION)
        dispatch = partial(self._dispatch, link)
        loop = asyncio.get_running_loop()
        next_ping_at = loop.time() + self._ping_interval_s
        ping: asyncio.Future[CommandReply] | None = None
        while True:
            if not pinging:
                await link.read(dispatch)
                continue
            try:
                async with asyncio.timeout_at(next_ping_at):
                    await link.read(dispatch)
                continue
            except TimeoutError:
                pass
            if ping is not None and not ping.done():
                raise DrachtioConnectionError(f"no pong within {self._ping_interval_s}s")
            ping = self._start_ping(link)
            next_ping_at = loop.time() + self._ping_interval_s

    def _start_ping(self, link: Link) -> asyncio.Future[CommandReply]:
        message_id = new_message_id()
        future = link.expect_reply(message_id)
        link.write_now(ping_payload(message_id))
        return future

    def _current_link(self) -> Link:
        link = self._link
        if link is None or not link.alive or not self._ready.is_set():
            raise DrachtioConnectionError(f"not connected to drachtio at {self._host}:{self._port}")
        return link

    # -- what arrives -----------------------------------------------------------------------

    def _dispatch(self, link: Link, message: ServerMessage) -> None:
        """Act on what the link did not settle: new requests; the rest is logged and dropped."""
        if not isinstance(message, SipDelivery):
            log.debug("drachtio message ignored type=%s", message.fields[1])
        elif message.source != "network" or not message.transaction_id or message.dialog_id:
            log.debug("drachtio sip message ignored source=%s txn=%s", message.source, message.transaction_id)
        else:
            try:
                self._on_request(link, message)
            except (DrachtioError, ValueError):
                # one bad message must not cost the link (and every transaction on it)
                log.exception("drachtio request not handled txn=%s", message.transaction_id)

    def _on_request(self, link: Link, delivery: SipDelivery) -> None:
        transaction_id = delivery.transaction_id
        try:
            message = parse_message(delivery.sip)
            if not isinstance(message, SipRequest):
                raise SipParseError("a response where a request was expected")
        except SipParseError as exc:
            self.stats.dropped_unparseable += 1
            log.warning(
                "drachtio request unparseable source=%s:%d txn=%s error=%s answer=400",
                delivery.source_address,
                delivery.source_port,
                transaction_id,
                exc,
            )
            self._answer_now(link, transaction_id, salvage_response(delivery.sip, 400, "Bad Request"))
            return
        problem = request_problem(delivery.sip, message)
        if problem is not None:
            self.stats.bad_requests += 1
            log.debug("drachtio request refused txn=%s reason=%s answer=400", transaction_id, problem)
            sip = render_response(message, 400, "Bad Request", [("X-Reason", problem)])
            self._answer_now(link, transaction_id, sip)
            return
        if self._closing or len(self._handlers) >= MAX_IN_FLIGHT_REQUESTS or self._tasks is None:
            self.stats.requests_refused += 1
            if self.stats.requests_refused % REFUSALS_PER_LOG_LINE == 1:  # the first, then one line per thousand
                log.warning(
                    "drachtio request refused method=%s in_flight=%d closing=%s answer=503 refused=%d",
                    message.method,
                    len(self._handlers),
                    self._closing,
                    self.stats.requests_refused,
                )
            self._answer_now(link, transaction_id, render_response(message, 503, "Service Unavailable"))
            return
        facts = TransportFacts(
            source_ip=delivery.source_address,
            source_port=delivery.source_port,
            transport=delivery.protocol,
            sbc_address=link.hostport,
            private_sbc_address=link.private_sbc_address,
        )
        delivered_at = asyncio.get_running_loop().time()
        send = partial(self._send_response, link, transaction_id, delivered_at)
        request = DrachtioRequest(message, facts, send)
        link.requests_open += 1
        answer_now = getattr(self._handler, "answer_now", None)
        if answer_now is not None and answer_now(request):
            # answered in place (a plain keep-alive OPTIONS): no task, nothing to wait for
            if not request.answered:
                link.requests_open -= 1
            return
        task = self._tasks.create_task(self._handle(request), name=f"drachtio {message.method} {transaction_id}")
        self._handlers.add(task)
        self._idle.clear()
        task.add_done_callback(partial(self._handler_done, link, request))

    def _handler_done(self, origin: Link, request: DrachtioRequest, task: asyncio.Task[None]) -> None:
        self._handlers.discard(task)
        if not request.answered:
            origin.requests_open -= 1  # given up on (cancelled by a stop, or no answer could be formed)
        if not self._handlers:
            self._idle.set()

    def _answer_now(self, link: Link, transaction_id: str, sip: bytes) -> None:
        """Answer from the reader, before any handler (400, 503); a failure to write is logged."""
        if not transaction_id:
            return
        try:
            link.write_answer(transaction_id, sip)
        except (DrachtioError, ValueError) as exc:
            log.warning("drachtio immediate answer not sent txn=%s error=%s", transaction_id, exc)

    async def _handle(self, request: DrachtioRequest) -> None:
        handler = self._handler
        try:
            if handler is None:
                log.warning("drachtio request with no handler set method=%s answer=503", request.message.method)
                await request.respond(503, "Service Unavailable")
                return
            await handler(request)
            if not request.answered:
                log.warning("drachtio handler left a request unanswered method=%s answer=500", request.message.method)
                await request.respond(500, "Server Internal Error")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("drachtio request handling failed method=%s", request.message.method)
            if not request.answered:
                with contextlib.suppress(DrachtioError, TimeoutError, OSError, ValueError):
                    await request.respond(500, "Server Internal Error")

    def _send_response(self, origin: Link, transaction_id: str, delivered_at: float, sip: bytes, final: bool) -> None:
        """Write one SIP response for a transaction `origin` delivered; on a later link if it is gone."""
        if not origin.alive:
            self._late.send(transaction_id, delivered_at, sip)
            return
        origin.write_answer(transaction_id, sip)
        if final:
            origin.requests_open -= 1
