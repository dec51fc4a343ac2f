"""From bytes on any native transport to a handled request: parse, check, rport, transaction, dispatch."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from ingest.fronts.front import RequestHandler, TransportFacts
from ingest.fronts.native.limits import FloodGuard
from ingest.fronts.native.transactions import ServerTransaction, TransactionTable
from ingest.sip import SipParseError, SipRequest, SipResponse, make_response, parse_message
from ingest.sip.keepalive import answer_plain_options
from ingest.sip.message import REQUIRED_REQUEST_HEADERS
from ingest.sip.tags import random_hex, stateless_to_tag

log = logging.getLogger(__name__)

Send = Callable[[bytes], None]
RFC3261_COOKIE = "z9hG4bK"


@dataclass(slots=True)
class FrontStats:
    received: int = 0
    dropped_unparseable: int = 0
    bad_requests: int = 0
    retransmissions_absorbed: int = 0
    responses_repeated: int = 0
    responses_sent: int = 0
    handler_errors: int = 0
    rejected_draining: int = 0
    flood_dropped: int = 0  # messages over a source's per-second limit, dropped unread
    connections_refused: int = 0  # stream connections over a source's limit
    connections_timed_out: int = 0  # stream connections closed with a message begun and not finished in time


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _facts(source: tuple[str, int], transport: str) -> TransportFacts:
    return TransportFacts(source[0], source[1], transport, "")


_TAG_KEY = os.urandom(16)  # keys the To tags of stateless answers (one process answers a request's retransmissions)


def _deliver(send: Send, data: bytes, status: int, destination: tuple[str, int], stats: FrontStats) -> None:
    """Sends one answer; a failed send is logged, never raised (the peer retransmits)."""
    stats.responses_sent += 1
    try:
        send(data)
    except (OSError, RuntimeError, asyncio.QueueFull) as exc:
        log.warning("response not sent status=%s to=%s:%s error=%s", status, destination[0], destination[1], exc)


class NativeIncoming:
    """A request held by the native front; `respond` sends the final answer once."""

    __slots__ = ("message", "facts", "_send", "_transaction", "_table", "_stats", "answered")

    def __init__(
        self,
        message: SipRequest,
        facts: TransportFacts,
        send: Send,
        transaction: ServerTransaction | None,
        table: TransactionTable | None,
        stats: FrontStats,
    ) -> None:
        self.message = message
        self.facts = facts
        self._send = send
        self._transaction = transaction
        self._table = table
        self._stats = stats
        self.answered = False

    def attach(self, transaction: ServerTransaction, table: TransactionTable) -> None:
        """From now on the answer is kept for retransmissions (a stateful answer)."""
        self._transaction = transaction
        self._table = table

    def _tag(self) -> str:
        if self._transaction is not None:
            return random_hex(5)
        # Answered without a transaction (RFC 3261 8.2.7, stateless UAS): a retransmission of the same
        # request must get the same To tag, so the tag is a keyed hash of the request's identity.
        headers = self.message.headers
        return stateless_to_tag(
            _TAG_KEY,
            headers.get("via") or "",
            headers.get("call-id") or "",
            headers.get("from") or "",
            headers.get("cseq") or "",
        )

    async def respond(
        self, status: int, reason: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> None:
        self.respond_now(status, reason, headers, body)

    def respond_now(self, status: int, reason: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> None:
        """Sends the answer without waiting for anything (the native front's sends never block)."""
        if self.answered:
            return
        try:
            response = make_response(self.message, status, reason, headers, to_tag=self._tag())
        except (SipParseError, ValueError) as exc:
            self.answered = True
            log.warning("no answer can be formed status=%s error=%s", status, exc)
            return
        response.body = body
        data = response.serialize()
        self.answered = True
        if self._transaction is not None and self._table is not None and status >= 200:
            self._table.complete(self._transaction, data)
        _deliver(self._send, data, status, (self.facts.source_ip, self.facts.source_port), self._stats)


class Dispatcher:
    """Shared by every native listener: turns received messages into handler calls.

    Handler calls run as tasks owned here; `drain` stops taking new requests (they get 503) and
    waits for those in flight.
    """

    def __init__(
        self, max_message_bytes: int, on_response: Callable[[SipResponse], None], flood: FloodGuard | None = None
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.on_response = on_response
        self.flood = flood  # None: no per-source rate limit
        self.handler: RequestHandler | None = None
        self.stats = FrontStats()
        self.sbc_address = ""
        self.private_sbc_address: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = False

    def receive(
        self, data: bytes, transport: str, source: tuple[str, int], send: Send, table: TransactionTable | None
    ) -> None:
        """Entry point of every transport for one complete message. Never raises."""
        self.stats.received += 1
        if self.flood is not None and not self.flood.admit(source[0]):
            self.stats.flood_dropped += 1
            return
        if data[:8] == b"OPTIONS " and self._answered_keepalive(data, source, send):
            return
        try:
            message = parse_message(data, max_message_bytes=self.max_message_bytes)
        except SipParseError as exc:
            self.stats.dropped_unparseable += 1
            log.debug("unparseable message dropped from=%s:%s error=%s", source[0], source[1], exc)
            return
        if isinstance(message, SipResponse):
            self.on_response(message)
            return
        if not data.isascii() and not _is_utf8(data):
            # RFC 3261 text is UTF-8; anything else could not be recorded faithfully as an event.
            self.stats.bad_requests += 1
            NativeIncoming(message, _facts(source, transport), send, None, None, self.stats).respond_now(
                400, "Bad Request", [("X-Reason", "Message is not valid UTF-8")]
            )
            return
        try:
            self._request(message, transport, source, send, table)
        except Exception:  # noqa: BLE001 - nothing a peer sends may stop a listener
            self.stats.dropped_unparseable += 1
            log.exception("request dropped from=%s:%s", source[0], source[1])

    def _answered_keepalive(self, data: bytes, source: tuple[str, int], send: Send) -> bool:
        """Answers a plain OPTIONS keep-alive from its bytes when the handler takes such keep-alives.

        Exactly the answer the full path would send, built from the bytes; anything unusual is left to
        the full path (False), as is everything while draining.
        """
        answer_keepalive = getattr(self.handler, "answer_keepalive", None)
        if answer_keepalive is None or self._draining:
            return False
        try:
            answer = answer_plain_options(data, source[0], source[1], _TAG_KEY, self.max_message_bytes)
        except Exception:  # noqa: BLE001 - the full path still answers
            log.exception("keep-alive fast path failed from=%s:%s", source[0], source[1])
            return False
        if answer is None or not answer_keepalive():
            return False
        _deliver(send, answer, 200, source, self.stats)
        return True

    def _request(
        self,
        message: SipRequest,
        transport: str,
        source: tuple[str, int],
        send: Send,
        table: TransactionTable | None,
    ) -> None:
        try:
            top = message.top_via
        except SipParseError:
            self.stats.dropped_unparseable += 1  # no Via: no way to address an answer
            return
        via = top.with_source(source[0], source[1])
        if via.params != top.params:
            message.top_via = via  # RFC 3581: the answer names the real source
        facts = TransportFacts(source[0], source[1], transport, self.sbc_address, self.private_sbc_address)
        headers = message.headers
        missing = [name for name in REQUIRED_REQUEST_HEADERS if headers.get(name) is None]
        problem = f"Missing {missing[0]} header" if missing else self._check(message)
        if problem is not None:
            self.stats.bad_requests += 1
            NativeIncoming(message, facts, send, None, None, self.stats).respond_now(
                400, "Bad Request", [("X-Reason", problem)]
            )
            return
        if message.method == "ACK":
            return  # no response, no transaction; nothing we answer with a 2xx dialog
        incoming = NativeIncoming(message, facts, send, None, None, self.stats)
        if not self._draining and self.handler is not None:
            answer_now = getattr(self.handler, "answer_now", None)
            if answer_now is not None and answer_now(incoming):
                # Answered in place without a transaction (keep-alive OPTIONS, 405): the answer depends on
                # nothing but the request, so a retransmission simply gets it again, and nothing is kept
                # for Timer J (at 20,000 OPTIONS/s that would be 640,000 answers held for 32 s).
                return
        if table is not None:
            transaction, new = table.begin(self._transaction_key(message, via))
            if not new:
                if transaction.final_response is not None:
                    self.stats.responses_repeated += 1
                    send(transaction.final_response)
                else:
                    self.stats.retransmissions_absorbed += 1
                return
            incoming.attach(transaction, table)
        if self._draining or self.handler is None:
            self.stats.rejected_draining += 1
            incoming.respond_now(503, "Service Unavailable")
            return
        self._spawn(self._handle(incoming))

    @staticmethod
    def _check(message: SipRequest) -> str | None:
        try:
            cseq = message.cseq
        except SipParseError:
            return "Invalid CSeq header"
        if cseq.method.upper() != message.method.upper():
            return "CSeq method does not match the request method"
        return None  # From/To are the registrar's business (an unparseable To gets 403, SPEC 2.2)

    @staticmethod
    def _transaction_key(message: SipRequest, via: object) -> tuple[str, ...]:
        branch = getattr(via, "branch", None) or ""
        method = message.method.upper()
        if branch.startswith(RFC3261_COOKIE):
            return (branch, f"{getattr(via, 'host', '')}:{getattr(via, 'port', '')}", method)
        from_tag = message.headers.get("from") or ""
        return (
            "2543",
            message.headers.get("call-id") or "",
            str(message.cseq.number),
            from_tag,
            branch,
            method,
        )

    async def _handle(self, incoming: NativeIncoming) -> None:
        assert self.handler is not None
        try:
            await self.handler(incoming)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one bad request must not affect the others
            self.stats.handler_errors += 1
            log.exception(
                "request handler failed method=%s call_id=%s",
                incoming.message.method,
                incoming.message.call_id,
            )
        if not incoming.answered:
            await incoming.respond(500, "Server Internal Error")

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, grace_s: float) -> None:
        """New requests get 503 from now on; waits up to `grace_s` for those in flight, then cancels."""
        self._draining = True
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=1.0)
