"""`LateAnswers`: answers to requests whose link went down before they were answered.

DRACHTIO.md 12 says both that drachtio keeps an unanswered request (it drops its copy after 64 s,
section 5) and that the old transaction ids "cannot be used any more" on a new connection. The
server's code looks a pending request up by transaction id alone, whatever connection the answer
comes on (`DrachtioController::setupLegForIncomingRequest`; `ClientController::leave` only forgets
the client). So such an answer is sent on the next link while drachtio can still hold its request,
and drachtio's confirmation decides: an OK answered the phone, a NOK (`Response not sent due to
unknown transaction`) is counted as refused. Answers that find no link in time are counted as lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from ingest.fronts.drachtio.link import DrachtioStats, Link

log = logging.getLogger(__name__)

# drachtio drops a request the app has not answered within 64 s (DRACHTIO.md 5); that clock started
# before the request reached us, hence the margin.
DRACHTIO_HOLD_S = 60.0


class LateAnswers:
    """Sends answers of cut-off requests on the current link, or keeps them (at most `limit`) until one is ready."""

    def __init__(self, stats: DrachtioStats, limit: int, hold_s: float = DRACHTIO_HOLD_S) -> None:
        self._stats = stats
        self._limit = limit
        self._hold_s = hold_s
        self._held: deque[tuple[float, str, bytes]] = deque()  # (delivered at, transaction id, SIP response)
        self._link: Link | None = None

    @property
    def held(self) -> int:
        return len(self._held)

    def send(self, transaction_id: str, delivered_at: float, sip: bytes) -> None:
        """Send now on the current link, keep for the next one, or count as lost. FrameTooLargeError."""
        if self._expired(delivered_at):
            self._stats.answers_lost += 1
            return
        link = self._link
        if link is not None and link.alive:
            link.write_answer(transaction_id, sip)
            self._stats.answers_relinked += 1
            return
        if len(self._held) >= self._limit:
            self._stats.answers_lost += 1
            return
        self._held.append((delivered_at, transaction_id, sip))

    def link_up(self, link: Link) -> None:
        """`link` is ready: send what was kept for it."""
        self._link = link
        if not self._held:
            return
        sent = lost = 0
        while self._held and link.alive:
            delivered_at, transaction_id, sip = self._held.popleft()
            if self._expired(delivered_at):
                lost += 1
                continue
            link.write_answer(transaction_id, sip)
            sent += 1
        self._stats.answers_relinked += sent
        self._stats.answers_lost += lost
        log.info("drachtio late answers sent on the new link sent=%d lost=%d", sent, lost)

    def link_down(self) -> None:
        self._link = None

    def close(self) -> int:
        """Nothing will be sent any more: count what is kept as lost and return how many that was."""
        lost = len(self._held)
        self._stats.answers_lost += lost
        self._held.clear()
        self._link = None
        return lost

    def _expired(self, delivered_at: float) -> bool:
        return asyncio.get_running_loop().time() - delivered_at >= self._hold_s
