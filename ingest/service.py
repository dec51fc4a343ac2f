"""Ingest: requests from a SIP front become events; the processors' decisions become SIP answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass

from events import Event, ReplyIssued, now_ms
from events.streams import partition_of
from ingest.fronts.front import IncomingRequest, SipFront
from ingest.replies import ReplyRouter
from ingest.requests import BadRequest, is_heartbeat, options_received, register_received
from ingest.sip import SipRequest
from runtime.errors import StoreUnavailable
from runtime.eventlog import Appender
from runtime.sealed import Sealer
from runtime.services import Services, Worker

log = logging.getLogger(__name__)

ALLOWED_METHODS = "REGISTER, OPTIONS"
RETRY_AFTER_S = 5  # what a shed request is told (Retry-After), so phones come back spread over seconds
TIMER_F_S = 32.0  # RFC 3261 Timer F: a phone gives up on a non-INVITE transaction after this
Answer = tuple[int, str, Sequence[tuple[str, str]]]


@dataclass(slots=True)
class IngestStats:
    registers: int = 0
    options_answered: int = 0
    heartbeats: int = 0
    bad_requests: int = 0
    not_allowed: int = 0
    decision_timeouts: int = 0
    store_failures: int = 0
    shed: int = 0  # answered 503 because too many requests of this ingest were waiting for a decision


class Ingest:
    """The request handler both fronts call: append, await the decision, answer."""

    def __init__(
        self,
        appender: Appender,
        replies: ReplyRouter,
        requests_stream: str | Sequence[str],
        reply_to: str,
        reply_timeout_s: float,
        max_pending: int = 0,
        heartbeats_stream: str | None = None,
        seal_credentials: Callable[[str], str] | None = None,
    ) -> None:
        self.appender = appender
        self.replies = replies
        # One `requests` stream per partition (SIDECAR_PARTITIONS): a REGISTER goes to its AOR's.
        self.requests_streams = (requests_stream,) if isinstance(requests_stream, str) else tuple(requests_stream)
        self.heartbeats_stream = heartbeats_stream or self.requests_streams[0]
        self.seal_credentials = seal_credentials  # Authorization fields never readable on a stream
        self.reply_to = reply_to
        self.reply_timeout_s = reply_timeout_s
        # A request event carries when nobody waits for its answer any more: this ingest's reply deadline,
        # and never later than the phone's own Timer F. A processor reading it later records it as expired.
        self.deadline_after_ms = int(min(reply_timeout_s, TIMER_F_S) * 1000)
        self.max_pending = max_pending  # 0: no bound
        self.stats = IngestStats()

    def _at_once(self, message: SipRequest) -> Answer | bool:
        """What needs no decision: the answer to send at once, True for none (ACK), False for a decision."""
        method = message.method.upper()
        if method == "REGISTER":
            return False
        if method == "OPTIONS":
            if is_heartbeat(message):
                return False
            self.stats.options_answered += 1
            return (200, "OK", ())
        if method == "ACK":
            return True
        self.stats.not_allowed += 1
        return (405, "Method Not Allowed", (("Allow", ALLOWED_METHODS),))

    def answer_now(self, request: IncomingRequest) -> bool:
        """Answers in place what needs no decision, for fronts that can send synchronously (`respond_now`)."""
        respond_now = getattr(request, "respond_now", None)
        if respond_now is None:
            return False
        answer = self._at_once(request.message)
        if isinstance(answer, tuple):
            respond_now(*answer)
            return True
        return answer

    def answer_keepalive(self) -> bool:
        """For fronts that recognize a plain OPTIONS (no heartbeat header) from its bytes: answer it 200 OK.

        The same answer and count as `_at_once` gives a parsed one; True tells the front to send it.
        """
        self.stats.options_answered += 1
        return True

    async def __call__(self, request: IncomingRequest) -> None:
        message = request.message
        answer = self._at_once(message)
        if isinstance(answer, tuple):
            await request.respond(*answer)
            return
        if answer:
            return
        is_register = message.method.upper() == "REGISTER"
        if is_register and self.max_pending and self.replies.waiting >= self.max_pending:
            # A storm above what the processors decide per second: answer the excess at once rather than
            # queue it (a queue seconds long makes every phone retransmit, which only adds work). Nothing
            # was recorded or decided; the phone registers again after Retry-After. Heartbeats are never
            # shed: a feature server that misses its check-ins would drop out of rotation.
            self.stats.shed += 1
            if self.stats.shed % 1000 == 1:  # the first, then one line per thousand
                log.warning(
                    "overloaded: answering 503 pending=%d max_pending=%d shed=%d",
                    self.replies.waiting,
                    self.max_pending,
                    self.stats.shed,
                )
            await request.respond(503, "Service Unavailable", [("Retry-After", str(RETRY_AFTER_S))])
            return
        if not is_register:  # a feature or RTP server's heartbeat OPTIONS (plain ones were answered above)
            self.stats.heartbeats += 1
            heartbeat = options_received(message, request.facts, self.reply_to, now_ms() + self.deadline_after_ms)
            await self._decide(request, heartbeat, self.heartbeats_stream)
            return
        self.stats.registers += 1
        event = register_received(
            message, request.facts, self.reply_to, now_ms() + self.deadline_after_ms, self.seal_credentials
        )
        if isinstance(event, BadRequest):
            self.stats.bad_requests += 1
            await request.respond(400, "Bad Request", [("X-Reason", event.reason)])
            return
        streams = self.requests_streams
        stream = streams[partition_of(event.aor or "", len(streams))] if len(streams) > 1 else streams[0]
        await self._decide(request, event, stream)

    async def _decide(self, request: IncomingRequest, event: Event, stream: str) -> None:
        # One future per request: the processor's reply resolves it, a failed append or the timer fails it.
        waiter = self.replies.expect(event.correlation_id)
        try:
            self.appender.submit(stream, event, waiter)
        except Exception as exc:  # noqa: BLE001 - any store fault is answered, never crashes the listener
            await self._store_failed(request, event, exc)
            return
        timer = asyncio.get_running_loop().call_later(self.reply_timeout_s, _expire, waiter)
        try:
            reply: ReplyIssued = await waiter
        except TimeoutError:
            self.replies.forget(event.correlation_id)
            self.stats.decision_timeouts += 1
            log.error(
                "no decision in time, answering 500 type=%s correlation_id=%s",
                event.TYPE,
                event.correlation_id,
            )
            await request.respond(500, "Server Internal Error", [("X-Reason", "no decision in time")])
            return
        except StoreUnavailable as exc:
            await self._store_failed(request, event, exc)
            return
        finally:
            timer.cancel()
            if waiter.cancelled():  # the request's task was cancelled (a stop's drain): nothing waits any more
                self.replies.forget(event.correlation_id)
        await request.respond(reply.status, reply.reason, reply.headers)

    async def _store_failed(self, request: IncomingRequest, event: Event, exc: Exception) -> None:
        self.replies.forget(event.correlation_id)
        self.stats.store_failures += 1
        log.error(
            "request not recorded, answering 500 type=%s call_id=%s error=%s",
            event.TYPE,
            getattr(event, "call_id", ""),
            exc,
        )
        await request.respond(500, "Server Internal Error", [("X-Reason", "event log unavailable")])


def _expire(waiter: asyncio.Future[ReplyIssued]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class IngestWorker:
    """The ingest role of a process: the SIP front, the reply reader and the append batcher."""

    name = "ingest"

    def __init__(self, services: Services, front: SipFront) -> None:
        settings = services.settings
        self.front = front
        self.eventlog = services.eventlog
        self.replies = ReplyRouter(
            services.redis,
            services.eventlog.blocking_reader(),
            services.codec,
            services.names.replies(settings.ingest_id),
        )
        self.appender = Appender(services.eventlog)
        self.ingest = Ingest(
            self.appender,
            self.replies,
            [names.requests for names in services.partitions],
            settings.ingest_id,
            settings.reply_timeout_s,
            settings.max_pending,
            heartbeats_stream=services.names.heartbeats,
            seal_credentials=Sealer(settings.encryption_secret.reveal()).seal,
        )
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def metrics(self) -> dict[str, float]:
        values: dict[str, float] = {f"requests_{k}": v for k, v in asdict(self.ingest.stats).items()}
        front_stats = getattr(self.front, "stats", None)
        if front_stats is not None and is_dataclass(front_stats) and not isinstance(front_stats, type):
            values.update({f"sip_{k}": v for k, v in asdict(front_stats).items()})
        values["replies_waiting"] = self.replies.waiting
        values["replies_late"] = self.replies.late_replies
        return values

    def is_healthy(self) -> bool:
        """False while the front is down (the drachtio link lost and reconnecting)."""
        return self.front.ready

    async def _front_ready(self) -> None:
        """The drachtio front connects in the background; wait for it (or for a stop)."""
        while not self.front.ready and not self._stop.is_set():
            try:
                async with asyncio.timeout(0.2):
                    await self._stop.wait()
            except TimeoutError:
                pass

    async def run(self) -> None:
        self.front.set_handler(self.ingest)
        async with asyncio.TaskGroup() as group:
            replies = group.create_task(self.replies.run(), name="replies")
            try:
                await self.replies.ready.wait()
                self.eventlog.attach_local(self.replies.stream, self.replies.deliver)
                try:
                    async with self.appender:
                        async with self.front:
                            await self._front_ready()
                            self.ready.set()
                            log.info("ingest serving sbc_address=%s", self.front.sbc_address)
                            await self._stop.wait()
                            log.info("ingest stopping: listeners closed, finishing in-flight requests")
                finally:
                    self.eventlog.detach_local(self.replies.stream)
            finally:
                # Also when the front failed to start: the reader must end, or the group (and the process) waits
                # for it forever should its cancellation be lost inside redis-py.
                self.replies.stop()
            await replies


def build_ingest(services: Services) -> list[Worker]:
    settings = services.settings
    from ingest.locator import SipLocator

    # One resolver for the native front's next hops and the edge's eph-gw-ip addresses (SIDECAR_DNS_SERVERS).
    locator = SipLocator(settings.sip.dns_servers)
    if settings.sip.front == "drachtio":
        from ingest.fronts.drachtio import DrachtioFront

        assert settings.drachtio is not None
        front: SipFront = DrachtioFront(
            settings.drachtio.host,
            settings.drachtio.port,
            settings.drachtio.secret,
            network_cidrs=settings.sip.network_cidrs,
        )
    else:
        from ingest.fronts.native import NativeFront

        front = NativeFront.from_settings(settings.sip, locator)
    from events.streams import edge_group
    from ingest.membership import Membership
    from ingest.outbound import OutboundRegistrations
    from runtime.admin import build as build_admin
    from runtime.consumer import ConcurrentConsumer
    from runtime.sealed import Sealer

    # The edge sends the REGISTERs the regbot of its own process commands (see ingest/outbound.py).
    sealer = Sealer(settings.encryption_secret.reveal())
    outbound = OutboundRegistrations(front, services.names, sealer, settings.ingest_id, locator)
    commands, group = services.names.commands, edge_group(settings.ingest_id)
    edge = ConcurrentConsumer(services.eventlog, commands, group, outbound, max_in_flight=200)
    # This SBC's heartbeat, and the clean-up after a gone peer's reply stream and edge group.
    membership = Membership(
        services.redis,
        services.names,
        settings.ingest_id,
        lambda: front.sbc_address,
        public_address=settings.sip.public_address,
        reply_deadline_s=settings.reply_timeout_s,
        forget_after_s=settings.dead_sbc_s,
    )
    # The admin socket (SPEC 5.1) lives beside the SIP edge: one per host, as the original's.
    return [IngestWorker(services, front), edge, membership, *build_admin(services)]
