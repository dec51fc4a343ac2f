"""Per-account limits on registration webhook calls: a bound on concurrent calls and a circuit breaker.

One tenant's broken webhook must not take the capacity of the others. Each account gets at most
`max_concurrency` calls in flight; a request beyond that waits for a slot only in its own account's
queue, and for no longer than it may wait (its deadline), then gets `WebhookFailure.BUSY`. An account
whose webhook fails `breaker_failures` times in a row (timed out or unreachable) has its circuit opened
for `open_s`: its REGISTERs get `WebhookFailure.CIRCUIT_OPEN` at once, no call made, rather than a
queue of calls that would all time out. After `open_s`, one call is let through as a trial: an answer
(any HTTP status) closes the circuit, a failure opens it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from processors.registrar.facts import WebhookFailure, WebhookVerdict

log = logging.getLogger(__name__)

_BREAKING = (WebhookFailure.TIMEOUT, WebhookFailure.UNREACHABLE)


@dataclass(slots=True)
class _Tenant:
    slots: asyncio.Semaphore
    failures: int = 0  # consecutive calls that timed out or found nobody
    open_until: float = 0.0  # monotonic time the circuit stays open until; 0: closed
    trial: bool = False  # a half-open trial call is in flight
    waiting: int = 0


@dataclass(slots=True)
class GateStats:
    calls: int = 0
    busy: int = 0  # refused: the account's slots stayed full until the request's deadline
    short_circuited: int = 0  # refused at once: the account's circuit was open
    circuits_opened: int = 0
    circuits_open: int = 0  # accounts whose circuit is open now (a gauge, updated on reads)


@dataclass(slots=True)
class WebhookGate:
    max_concurrency: int = 400
    breaker_failures: int = 5  # 0: no breaker
    open_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    stats: GateStats = field(default_factory=GateStats)
    _tenants: dict[str, _Tenant] = field(default_factory=dict)

    def _tenant(self, account_sid: str) -> _Tenant:
        tenant = self._tenants.get(account_sid)
        if tenant is None:
            tenant = self._tenants[account_sid] = _Tenant(asyncio.Semaphore(self.max_concurrency))
        return tenant

    def metrics(self) -> dict[str, float]:
        now = self.clock()
        self.stats.circuits_open = sum(1 for t in self._tenants.values() if t.open_until > now)
        return {f"webhook_{key}": getattr(self.stats, key) for key in self.stats.__slots__}  # type: ignore[attr-defined]

    async def call(
        self, account_sid: str, call: Callable[[], Awaitable[WebhookVerdict]], *, max_wait_s: float
    ) -> WebhookVerdict:
        """The verdict of `call()` made within the account's limits, or the limit's failure without a call."""
        tenant = self._tenant(account_sid)
        trial = False
        if tenant.open_until:
            if tenant.open_until > self.clock() or tenant.trial:
                self.stats.short_circuited += 1
                return WebhookVerdict(failure=WebhookFailure.CIRCUIT_OPEN)
            trial = tenant.trial = True  # half-open: this call decides
        try:
            tenant.waiting += 1
            try:
                async with asyncio.timeout(max(max_wait_s, 0.0)):
                    await tenant.slots.acquire()
            except TimeoutError:
                self.stats.busy += 1
                return WebhookVerdict(failure=WebhookFailure.BUSY)
            finally:
                tenant.waiting -= 1
            if tenant.open_until > self.clock() and not trial:
                # The circuit opened while this request waited for a slot: no call, as for those that came later.
                tenant.slots.release()
                self.stats.short_circuited += 1
                return WebhookVerdict(failure=WebhookFailure.CIRCUIT_OPEN)
            try:
                self.stats.calls += 1
                verdict = await call()
            finally:
                tenant.slots.release()
            self._record(account_sid, tenant, verdict)
            return verdict
        finally:
            if trial:
                tenant.trial = False

    def _record(self, account_sid: str, tenant: _Tenant, verdict: WebhookVerdict) -> None:
        if verdict.failure not in _BREAKING:
            if tenant.open_until:
                log.info("webhook circuit closed account_sid=%s", account_sid)
            tenant.failures, tenant.open_until = 0, 0.0
            return
        tenant.failures += 1
        if self.breaker_failures and tenant.failures >= self.breaker_failures:
            if not tenant.open_until or tenant.open_until <= self.clock():
                self.stats.circuits_opened += 1
                log.warning(
                    "webhook circuit opened account_sid=%s failures=%d open_s=%s",
                    account_sid,
                    tenant.failures,
                    self.open_s,
                )
            tenant.open_until = self.clock() + self.open_s
