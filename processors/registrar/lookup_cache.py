"""A small in-process TTL cache with single-flight loading, for the registrar's MySQL lookups.

Concurrent misses of one key share one load: a batch of REGISTERs for one realm costs one
query, not one per request. Values (including "not found") live for `ttl_s`; failures are not
cached. A leader that is cancelled hands its followers a `LookupAbandoned` instead of a
cancellation that is not theirs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from runtime.errors import StoreUnavailable

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Missing:
    """The type of MISSING: nothing cached (None may be a cached value)."""

    __slots__ = ()


MISSING = Missing()


class LookupAbandoned(StoreUnavailable):
    """The request that was loading a shared value was cancelled before it finished."""


class TtlCache(Generic[K, V]):
    def __init__(self, ttl_s: float, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s < 0:
            raise ValueError("ttl_s must not be negative")
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def peek(self, key: K) -> V | Missing:
        """The fresh cached value of `key` without loading it; MISSING when there is none."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock():
            return entry[1]
        return MISSING

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        entry = self._entries.get(key)
        if entry is not None:
            if entry[0] > self._clock():
                return entry[1]
            del self._entries[key]
        loading = self._loading.get(key)
        if loading is not None:
            # shield: a follower that is cancelled must not cancel the shared load.
            return await asyncio.shield(loading)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await load()
        except asyncio.CancelledError:
            self._fail(future, LookupAbandoned(f"lookup of {key!r} was cancelled"))
            raise
        except BaseException as exc:
            self._fail(future, exc)
            raise
        finally:
            del self._loading[key]
        future.set_result(value)
        if self._ttl_s > 0:
            self._store(key, value)
        return value

    @staticmethod
    def _fail(future: asyncio.Future[V], exc: BaseException) -> None:
        future.set_exception(exc)
        future.exception()  # retrieved: no "exception was never retrieved" without followers

    def _store(self, key: K, value: V) -> None:
        if len(self._entries) >= self._max_entries:
            now = self._clock()
            for stale in [k for k, (expires_at, _) in self._entries.items() if expires_at <= now]:
                del self._entries[stale]
            while len(self._entries) >= self._max_entries:
                del self._entries[next(iter(self._entries))]  # the oldest insertion
        self._entries[key] = (self._clock() + self._ttl_s, value)
