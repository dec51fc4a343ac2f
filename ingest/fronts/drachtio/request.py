"""`DrachtioRequest`: an incoming REGISTER or OPTIONS that drachtio holds open until we answer it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from ingest.fronts.drachtio.framing import FrameTooLargeError
from ingest.fronts.drachtio.render import render_response
from ingest.fronts.front import TransportFacts
from ingest.sip import SipRequest

SendResponse = Callable[[bytes], Awaitable[None]]


class DrachtioRequest:
    """The `IncomingRequest` of the drachtio front.

    `respond` renders the SIP response text and hands it to `send` (the front's `sip|<txn>|` frame
    writer, which waits for drachtio's OK). Provisional answers may come first; after the final one
    (status >= 200) the transaction is over and a second final answer raises RuntimeError.
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
        """Send a response; raises DrachtioCommandError if drachtio refuses it (NOK),
        DrachtioConnectionError if the connection that delivered the request is gone, TimeoutError
        if drachtio does not acknowledge in time, FrameTooLargeError for a response over ~12 KB."""
        if self._answered:
            raise RuntimeError(f"{self._message.method} already has its final response")
        sip = render_response(self._message, status, reason, headers, body)
        if status >= 200:
            self._answered = True
        try:
            await self._send(sip)
        except FrameTooLargeError:
            self._answered = False  # nothing went out: the caller may still answer, e.g. with 500
            raise

    def __repr__(self) -> str:
        return f"<DrachtioRequest {self._message.method} from {self._facts.source_ip}:{self._facts.source_port}>"
