"""`Link`: one TCP connection to drachtio, its frames, and the waiters that die with it.

Only the front's supervisor task reads (`read`); any task may write a frame and wait for its reply
(`command`). Replies and client-transaction responses are matched here by message id and
transaction id; everything else `read` hands back to the front to act on, in order.

Answers to incoming requests (`write_answer`) wait for nothing: the message id of each is kept with
its transaction id until drachtio's OK or NOK comes, which is matched and, for a NOK, counted. An
answer whose confirmation has not come within `request_timeout_s`, or by the time the link goes
down, is counted as unconfirmed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ingest.fronts.drachtio.errors import DrachtioCommandError, DrachtioConnectionError
from ingest.fronts.drachtio.framing import FrameDecoder, FrameFormatError, encode_frame
from ingest.fronts.drachtio.messages import (
    CommandReply,
    MessageFormatError,
    ServerMessage,
    SipDelivery,
    new_message_id,
    parse_server_message,
    response_payload,
)
from ingest.fronts.front import ClientAnswer
from ingest.sip import SipParseError, SipResponse, parse_message

log = logging.getLogger(__name__)

_READ_CHUNK_BYTES = 65536
# Frames written and not yet taken by the kernel. Past this drachtio has stopped reading (at 8,000
# answers/s of ~400 bytes this is 5 s of them): the link is dropped rather than the memory grown.
MAX_UNSENT_BYTES = 16 * 1024 * 1024
REFUSALS_PER_LOG_LINE = 1000  # a refusal is logged the first time, then once per this many

Dispatch = Callable[[ServerMessage], None]


@dataclass(slots=True)
class DrachtioStats:
    """Counters of the control connection, for metrics (`sip_<name>`) and tests."""

    frames_in: int = 0
    frames_out: int = 0
    reconnects: int = 0
    dropped_unparseable: int = 0
    bad_requests: int = 0  # answered 400 here: not UTF-8, a required header missing, a bad CSeq
    requests_refused: int = 0  # answered 503 here: closing, or MAX_IN_FLIGHT_REQUESTS handlers busy
    links_lost: int = 0  # links that went down after they were ready
    streams_corrupt: int = 0  # of those, links dropped because a frame from drachtio was malformed
    requests_cut_off: int = 0  # requests not yet answered on a link when it went down
    answers_unconfirmed: int = 0  # answers whose OK/NOK never came (link lost, or request_timeout_s passed)
    answers_refused: int = 0  # answers drachtio refused (NOK), on any link
    answers_relinked: int = 0  # answers to cut-off requests sent on a later link
    answers_lost: int = 0  # answers to cut-off requests never sent (see LateAnswers)


class Link:
    """A connected (not yet authenticated) control connection; `routed` once the handshake is done."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stats: DrachtioStats,
        request_timeout_s: float,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._stats = stats
        self._request_timeout_s = request_timeout_s
        self._decoder = FrameDecoder()
        self._replies: dict[str, asyncio.Future[CommandReply]] = {}
        self._opening: set[str] = set()  # ids of new requests: their OK carries a transaction id
        self._transactions: dict[str, asyncio.Future[ClientAnswer]] = {}  # our client transactions
        self._answers: dict[str, str] = {}  # message id of an answer -> its transaction id, until OK/NOK
        self._answer_times: deque[tuple[float, str]] = deque()  # (sent at, message id), oldest first
        self._stuck = False
        self.requests_open = 0  # requests delivered on this link whose final answer is not yet written
        self.hostport = ""
        self.local_hostports = ""
        self.server_version = ""
        self.private_sbc_address: str | None = None
        self.routed = False

    @classmethod
    async def open(cls, host: str, port: int, stats: DrachtioStats, request_timeout_s: float) -> Link:
        """Connect with a deadline; TCP_NODELAY and SO_KEEPALIVE on, as drachtio-srf does."""
        async with asyncio.timeout(request_timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return cls(reader, writer, stats, request_timeout_s)

    @property
    def alive(self) -> bool:
        return not self._writer.is_closing()

    # -- writing ----------------------------------------------------------------------------

    def write_now(self, payload: bytes) -> None:
        """Queue one frame; FrameTooLargeError (nothing written) or DrachtioConnectionError."""
        if not self.alive:
            raise DrachtioConnectionError("drachtio connection is closed")
        self._writer.write(encode_frame(payload))
        self._stats.frames_out += 1
        if self._writer.transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            self._stuck = True
            self._writer.transport.abort()  # the reader sees the end and the link goes down

    def write_answer(self, transaction_id: str, sip: bytes) -> None:
        """Queue a SIP response for an incoming transaction; its OK/NOK is matched by `read`.

        FrameTooLargeError (nothing written), DrachtioConnectionError if the link is down.
        """
        message_id = new_message_id()
        self.write_now(response_payload(message_id, transaction_id, sip))
        now = asyncio.get_running_loop().time()
        self._answers[message_id] = transaction_id
        self._answer_times.append((now, message_id))
        self._forget_answers_sent_before(now - self._request_timeout_s)

    @property
    def answers_pending(self) -> int:
        """Answers written whose OK/NOK has not come yet."""
        return len(self._answers)

    def _forget_answers_sent_before(self, deadline: float) -> None:
        times = self._answer_times
        while times and times[0][0] <= deadline:
            _, message_id = times.popleft()
            if self._answers.pop(message_id, None) is not None:
                self._stats.answers_unconfirmed += 1

    async def write(self, payload: bytes) -> None:
        self.write_now(payload)
        async with asyncio.timeout(self._request_timeout_s):
            await self._writer.drain()

    def expect_reply(self, message_id: str) -> asyncio.Future[CommandReply]:
        """A future for the reply to `message_id`, forgotten once it is done."""
        future: asyncio.Future[CommandReply] = asyncio.get_running_loop().create_future()
        self._replies[message_id] = future
        future.add_done_callback(lambda _: self._replies.pop(message_id, None))
        return future

    async def command(
        self, message_id: str, payload: bytes, what: str, *, opens_transaction: bool = False
    ) -> CommandReply:
        """Send a message and wait (at most `request_timeout_s`) for its OK reply.

        NO/NOK raise DrachtioCommandError. With `opens_transaction`, an OK's transaction id
        (field 10) is registered before the reply is handed over, so `final_response` cannot miss
        a response that arrived in the same read.
        """
        future = self.expect_reply(message_id)
        if opens_transaction:
            self._opening.add(message_id)
        try:
            async with asyncio.timeout(self._request_timeout_s):
                await self.write(payload)
                reply = await future
        finally:
            future.cancel()  # no-op once done; otherwise drops the registration
            self._opening.discard(message_id)
        if not reply.ok:
            raise DrachtioCommandError(what, reply.status, reply.reason)
        return reply

    async def final_response(self, transaction_id: str) -> ClientAnswer:
        """Wait (no deadline of its own) for the first response >= 200 of our client transaction.

        Its source is the leader's `<proto>|<addr>|<port>`, except on responses the stack made up (a
        Timer F 408, a 503 for an unreachable target), which come with no address and port 0.
        """
        future = self._transactions.get(transaction_id)
        if future is None:
            raise DrachtioConnectionError("drachtio connection lost before the request went out")
        try:
            return await future
        finally:
            self._transactions.pop(transaction_id, None)

    # -- reading ----------------------------------------------------------------------------

    async def read(self, dispatch: Dispatch) -> None:
        """Read once; settle replies and client-transaction responses; hand the rest to `dispatch`, in order.

        Raises DrachtioConnectionError at EOF. On a malformed frame every message before it that can
        be trusted (FrameFormatError.intact) is acted on first, then FrameFormatError is raised.
        """
        data = await self._reader.read(_READ_CHUNK_BYTES)
        if not data:
            why = "drachtio is not reading" if self._stuck else "drachtio closed the connection"
            raise DrachtioConnectionError(why)
        try:
            payloads = self._decoder.feed(data)
        except FrameFormatError as exc:
            self._take(exc.intact, dispatch)
            raise
        self._take(payloads, dispatch)

    def _take(self, payloads: list[bytes], dispatch: Dispatch) -> None:
        for payload in payloads:
            self._stats.frames_in += 1
            try:
                message = parse_server_message(payload)
            except MessageFormatError as exc:
                self._stats.dropped_unparseable += 1
                log.warning("drachtio message dropped error=%s leader=%r", exc, payload[:120])
                continue
            if isinstance(message, CommandReply):
                self._settle_reply(message)
            elif isinstance(message, SipDelivery) and message.is_response:
                self._settle_response(message)
            else:
                dispatch(message)

    def _settle_reply(self, reply: CommandReply) -> None:
        transaction_id = self._answers.pop(reply.request_id, None)
        if transaction_id is not None:
            if not reply.ok:
                self._count_refusal(transaction_id, reply)
            return
        future = self._replies.get(reply.request_id)
        if future is None or future.done():
            log.debug("drachtio reply to no waiting message id=%s status=%s", reply.request_id, reply.status)
            return
        if reply.continues:
            return
        transaction_id = reply.field(10)
        if reply.ok and reply.request_id in self._opening and transaction_id:
            self._transactions[transaction_id] = asyncio.get_running_loop().create_future()
        future.set_result(reply)

    def _count_refusal(self, transaction_id: str, reply: CommandReply) -> None:
        self._stats.answers_refused += 1
        if self._stats.answers_refused % REFUSALS_PER_LOG_LINE == 1:
            log.warning(
                "drachtio refused an answer txn=%s status=%s reason=%r refused=%d",
                transaction_id,
                reply.status,
                reply.reason,
                self._stats.answers_refused,
            )

    def _settle_response(self, delivery: SipDelivery) -> None:
        future = self._transactions.get(delivery.transaction_id)
        if future is None or future.done():
            log.debug("drachtio response for an unknown transaction txn=%s ignored", delivery.transaction_id)
            return
        try:
            response = parse_message(delivery.sip)
        except SipParseError as exc:
            self._stats.dropped_unparseable += 1
            log.warning("drachtio response unparseable txn=%s error=%s", delivery.transaction_id, exc)
            return
        if not isinstance(response, SipResponse):
            self._stats.dropped_unparseable += 1
            log.warning("drachtio response frame holds a request txn=%s", delivery.transaction_id)
            return
        if response.status < 200:
            log.debug("drachtio provisional skipped txn=%s status=%d", delivery.transaction_id, response.status)
            return
        source = None
        if delivery.source_address and delivery.source_port:
            source = (delivery.protocol or "udp", delivery.source_address, delivery.source_port)
        future.set_result(ClientAnswer(response, source))

    # -- the end ----------------------------------------------------------------------------

    def close(self, error: BaseException) -> int:
        """Fail every waiter with `error`, close the socket; return (and count) the answers left unconfirmed.

        Idempotent. What was written and not yet sent still goes out (a close flushes; `abort` does not).
        """
        _fail(list(self._replies.values()), error)
        _fail(list(self._transactions.values()), error)
        self._replies.clear()
        self._transactions.clear()
        self._opening.clear()
        unconfirmed = len(self._answers)
        self._stats.answers_unconfirmed += unconfirmed
        self._answers.clear()
        self._answer_times.clear()
        self._writer.close()
        return unconfirmed


def _fail(
    futures: Iterable[asyncio.Future[CommandReply]] | Iterable[asyncio.Future[ClientAnswer]],
    error: BaseException,
) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)
            future.exception()  # mark retrieved: a waiter that already left must not warn
