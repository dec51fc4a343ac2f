"""The native front's per-source limits with an injected clock: the flood guard's window, the connection bound."""

from __future__ import annotations

from ingest.fronts.native.limits import ConnectionBound, FloodGuard, TrustedSources


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_trusted_sources_match_by_network_and_ignore_junk() -> None:
    trusted = TrustedSources(["127.0.0.0/8", "::1"])
    assert "127.0.0.1" in trusted and "127.9.9.9" in trusted and "::1" in trusted
    assert "10.0.0.1" not in trusted and "not-an-ip" not in trusted and "" not in trusted
    assert "127.0.0.1" not in TrustedSources([])


def test_flood_guard_admits_the_limit_per_second_per_source() -> None:
    clock = Clock()
    guard = FloodGuard(3, TrustedSources(["127.0.0.0/8"]), clock)
    assert [guard.admit("203.0.113.9") for _ in range(5)] == [True, True, True, False, False]
    assert [guard.admit("198.51.100.7") for _ in range(3)] == [True] * 3  # another source has its own count
    assert all(guard.admit("127.0.0.1") for _ in range(1000))  # trusted: never counted
    clock.now += 0.5
    assert not guard.admit("203.0.113.9")  # still the same second
    clock.now += 0.5
    assert guard.admit("203.0.113.9")  # a new second, a new count
    assert guard.dropped == 3


def test_connection_bound_counts_per_source_and_releases() -> None:
    bound = ConnectionBound(2, TrustedSources(["127.0.0.1/32"]))
    assert [bound.acquire("203.0.113.9") for _ in range(3)] == [True, True, False]
    assert bound.refused == 1 and bound.open_from("203.0.113.9") == 2
    bound.release("203.0.113.9")
    assert bound.acquire("203.0.113.9")
    assert all(bound.acquire("127.0.0.1") for _ in range(10))
    bound.release("127.0.0.1")  # never counted: nothing to release
    assert bound.open_from("127.0.0.1") == 0
    unbounded = ConnectionBound(0, TrustedSources([]))
    assert all(unbounded.acquire("203.0.113.9") for _ in range(1000))
