"""Per-source limits of the native front: a flood guard (messages per second per IP, pike-like) and a bound on
the stream connections one IP holds. Trusted sources (loopback by default) are exempt from both."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

MEMO_SIZE = 4096  # addresses whose trust is remembered; past this the memo starts afresh
LOG_LINES_PER_S = 10  # flood warnings per second at most, whatever the number of sources


class TrustedSources:
    """Membership of an IP address in the trusted networks, memoized (it is asked for every message)."""

    __slots__ = ("_networks", "_memo")

    def __init__(self, cidrs: Sequence[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)
        self._memo: dict[str, bool] = {}

    def __contains__(self, ip: str) -> bool:
        known = self._memo.get(ip)
        if known is None:
            known = self._check(ip)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[ip] = known
        return known

    def _check(self, ip: str) -> bool:
        if not self._networks:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self._networks)


class FloodGuard:
    """At most `max_per_s` messages per source IP in each second; the rest are dropped before any parsing.

    A fixed one-second window per source, as Kamailio's pike samples: the counts are forgotten when the
    second turns, so the memory is bounded by the sources of one second. Dropped, not answered: a flood's
    source address may be forged, and an answer would reflect it onto someone else.
    """

    __slots__ = ("max_per_s", "trusted", "dropped", "_clock", "_window", "_counts", "_logged")

    def __init__(self, max_per_s: int, trusted: TrustedSources, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_per_s = max_per_s
        self.trusted = trusted
        self.dropped = 0
        self._clock = clock
        self._window = -1
        self._counts: dict[str, int] = {}
        self._logged = 0

    def admit(self, ip: str) -> bool:
        """Whether a message from `ip` may go on; counts it."""
        if ip in self.trusted:
            return True
        window = int(self._clock())
        if window != self._window:
            self._window = window
            self._counts.clear()
            self._logged = 0
        count = self._counts.get(ip, 0) + 1
        self._counts[ip] = count
        if count <= self.max_per_s:
            return True
        self.dropped += 1
        if count == self.max_per_s + 1 and self._logged < LOG_LINES_PER_S:
            self._logged += 1
            log.warning(
                "flood from one source: dropping its messages this second source=%s max_per_s=%d", ip, self.max_per_s
            )
        return False


class ConnectionBound:
    """At most `max_per_ip` stream connections (TCP, TLS, WS) from one source IP at once."""

    __slots__ = ("max_per_ip", "trusted", "refused", "_open")

    def __init__(self, max_per_ip: int, trusted: TrustedSources) -> None:
        self.max_per_ip = max_per_ip
        self.trusted = trusted
        self.refused = 0
        self._open: dict[str, int] = {}

    def acquire(self, ip: str) -> bool:
        """Counts a new connection from `ip`; False (and nothing counted) when it is one too many."""
        if self.max_per_ip <= 0 or ip in self.trusted:
            return True
        count = self._open.get(ip, 0)
        if count >= self.max_per_ip:
            self.refused += 1
            if self.refused % 1000 == 1:
                log.warning(
                    "connection refused: too many from one source source=%s max_per_ip=%d refused=%d",
                    ip,
                    self.max_per_ip,
                    self.refused,
                )
            return False
        self._open[ip] = count + 1
        return True

    def release(self, ip: str) -> None:
        """A connection counted by `acquire` closed."""
        count = self._open.get(ip)
        if count is None:
            return  # trusted, or not counted
        if count <= 1:
            del self._open[ip]
        else:
            self._open[ip] = count - 1

    def open_from(self, ip: str) -> int:
        return self._open.get(ip, 0)
