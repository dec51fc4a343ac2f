"""RFC 3261 non-INVITE server transactions, as a table: absorb retransmissions, repeat final answers.

A transaction is keyed by the top Via's branch (with the sent-by and method, RFC 3261 17.2.3);
for a pre-RFC 3261 branch the Call-ID, CSeq and From tag stand in. While the decision is
pending a retransmission is absorbed; once the final response is sent, retransmissions get it
again until Timer J (64*T1 = 32 s over UDP; 0 over reliable transports). Expired entries are
swept lazily from a time-ordered queue, so there is no timer per transaction.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

TIMER_J_UDP_S = 32.0


@dataclass(slots=True)
class ServerTransaction:
    key: tuple[str, ...]
    final_response: bytes | None = None
    expires_at: float = 0.0


class TransactionTable:
    """Server transactions of one listener (or of one connection-oriented transport)."""

    def __init__(
        self, timer_j_s: float = TIMER_J_UDP_S, clock: Callable[[], float] = time.monotonic, max_pending_s: float = 64.0
    ) -> None:
        self.timer_j_s = timer_j_s
        self.clock = clock
        self.max_pending_s = max_pending_s  # a decision never takes this long; forget it then
        self._table: dict[tuple[str, ...], ServerTransaction] = {}
        self._expiry: deque[tuple[float, tuple[str, ...]]] = deque()

    def __len__(self) -> int:
        return len(self._table)

    def begin(self, key: tuple[str, ...]) -> tuple[ServerTransaction, bool]:
        """The transaction for `key`, and whether it is new (False: a retransmission)."""
        self._sweep()
        existing = self._table.get(key)
        if existing is not None:  # counted by the dispatcher (FrontStats)
            return existing, False
        transaction = ServerTransaction(key, expires_at=self.clock() + self.max_pending_s)
        self._table[key] = transaction
        self._expiry.append((transaction.expires_at, key))
        return transaction, True

    def complete(self, transaction: ServerTransaction, final_response: bytes) -> None:
        """Records the final response; retransmissions get it until Timer J fires."""
        transaction.final_response = final_response
        if self.timer_j_s <= 0:
            self._table.pop(transaction.key, None)
            return
        transaction.expires_at = self.clock() + self.timer_j_s
        self._expiry.append((transaction.expires_at, transaction.key))

    def _sweep(self) -> None:
        now = self.clock()
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _, key = expiry.popleft()
            transaction = self._table.get(key)
            if transaction is not None and transaction.expires_at <= now:
                del self._table[key]
