"""`DrachtioRequest`: an incoming REGISTER or OPTIONS that drachtio holds open until we answer it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ingest.fronts.drachtio.framing import FrameTooLargeError
from ingest.fronts.drachtio.render import render_response
from ingest.fronts.front import TransportFacts
from ingest.sip import SipParseError, SipRequest
from ingest.sip.message import REQUIRED_REQUEST_HEADERS

SendResponse = Callable[[bytes, bool], None]
"""Writes the SIP response text (and whether it is final) as a `sip|<txn>|` frame; waits for nothing."""


class DrachtioRequest:
    """The `IncomingRequest` of the drachtio front.

    `respond` renders the SIP response text and hands it to `send`, the front's frame writer; the
    work is over once the frame is written. drachtio's OK or NOK for it is matched by the front
    (a NOK is counted, see DrachtioStats), not waited for. Provisional answers may come first;
    after the final one (status >= 200) the transaction is over and a second final answer raises
    RuntimeError.
    """

    __slots__ = ("_message", "_facts", "_send", "_answered")

    def __init__(self, message: SipRequest, facts: TransportFacts, send: SendResponse) -> None:
        self._message = message
        self._facts = facts
        self._send = send
        self._answered = False

    @property
    def message(self) -> SipRequest:
        return self._message

    @property
    def facts(self) -> TransportFacts:
        return self._facts

    @property
    def answered(self) -> bool:
        """A final response has been handed to drachtio (whether or not drachtio took it)."""
        return self._answered

    async def respond(
        self, status: int, reason: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> None:
        """Send a response (see `respond_now`)."""
        self.respond_now(status, reason, headers, body)

    def respond_now(self, status: int, reason: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> None:
        """Write a response. FrameTooLargeError for one over ~12 KB (nothing is sent; another answer
        may follow), ValueError for a bad status, reason or header. A link lost since the request
        came is not an error: the front sends the answer on the next link or counts it lost."""
        if self._answered:
            raise RuntimeError(f"{self._message.method} already has its final response")
        sip = render_response(self._message, status, reason, headers, body)
        final = status >= 200
        if final:
            self._answered = True
        try:
            self._send(sip, final)
        except FrameTooLargeError:
            self._answered = False  # nothing went out: the caller may still answer, e.g. with 500
            raise

    def __repr__(self) -> str:
        return f"<DrachtioRequest {self._message.method} from {self._facts.source_ip}:{self._facts.source_port}>"


def request_problem(raw: bytes, message: SipRequest) -> str | None:
    """The X-Reason of the 400 a parsed request gets before any handler sees it, or None.

    The same refusals, in the same words, as the native front's (ingest/fronts/native/dispatch.py):
    drachtio passes on bytes that are not UTF-8, which no event could record faithfully.
    """
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return "Message is not valid UTF-8"
    headers = message.headers
    for name in REQUIRED_REQUEST_HEADERS:
        if headers.get(name) is None:
            return f"Missing {name} header"
    try:
        cseq = message.cseq
    except SipParseError:
        return "Invalid CSeq header"
    if cseq.method.upper() != message.method.upper():
        return "CSeq method does not match the request method"
    return None
