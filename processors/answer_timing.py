"""Times the registrar's answers for the metrics: a ConcurrentHandler wrapped around the registrar.

Each REGISTER's answer is timed from the request event's `occurred_at` (the ingest's clock when the
request arrived) to the moment its decision is made; the commit and the send that follow add about a
millisecond. The path says how it was decided, from the facts of the decision and from whether the
webhook client was called while deciding (`runtime.metrics.current_auth_call`, set per decision):

- `cached`: answered from the cached binding (RegistrationRefreshed, SPEC 2.3);
- `webhook`: the account's registration webhook was called;
- `clients`: the `clients` table decided (a grant, a removal, or 403 Invalid credentials without a webhook);
- `challenge`: a 401;
- `other`: anything else (unknown realm, device limit, a store failure ...).

Verdicts of an authentication (200 or 403, webhook or clients table) are also timed as jambonz's
`app.hook.response_time`: the webhook's own round trip, or the decision's lookups for the clients table.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from events import (
    Event,
    RegisterReceived,
    RegisterRejected,
    RegistrationGranted,
    RegistrationRefreshed,
    RegistrationRemoved,
    ReplyIssued,
)
from runtime.handling import ConcurrentHandler, Delivery, Outcome, Step
from runtime.metrics import AuthCall, Metrics, current_auth_call

INVALID_CREDENTIALS = "Invalid credentials"  # the X-Reason of a 403 for wrong credentials (SPEC 2.6, 2.7)


def answer_path(outcome: Outcome, call: AuthCall | None) -> tuple[int, str] | None:
    """(SIP status, path) of a decided REGISTER; None when the outcome answers nobody (an expired request)."""
    reply = next((event for _, event in outcome.appends if isinstance(event, ReplyIssued)), None)
    if reply is None:
        return None
    facts = [event for _, event in outcome.appends if not isinstance(event, ReplyIssued)]
    if any(isinstance(fact, RegistrationRefreshed) for fact in facts):
        return reply.status, "cached"
    if call is not None and call.webhook_s is not None:
        return reply.status, "webhook"
    if reply.status == 401:
        return reply.status, "challenge"
    if any(_by_clients_table(fact) for fact in facts):
        return reply.status, "clients"
    return reply.status, "other"


def _by_clients_table(fact: Event) -> bool:
    if isinstance(fact, RegistrationGranted | RegistrationRemoved):
        return True
    if isinstance(fact, RegisterRejected):
        return fact.x_reason == INVALID_CREDENTIALS or fact.cause.startswith("client")
    return False


class TimedRegistrar:
    """Passes every call to the registrar and reports each decided answer to `Metrics`."""

    def __init__(self, registrar: ConcurrentHandler, metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self.registrar = registrar
        self._metrics = metrics
        self._clock = clock

    def order_key(self, event: Event) -> str | None:
        return self.registrar.order_key(event)

    def metrics(self) -> dict[str, float]:
        """The registrar's own counters (its webhook gate), for the consumer's `/metrics` lines."""
        inner = getattr(self.registrar, "metrics", None)
        return inner() if callable(inner) else {}

    async def begin(self, deliveries: Sequence[Delivery]) -> Sequence[Step]:
        # Each decision that waits on I/O gets its own AuthCall, set in its own task's context before the
        # registrar's coroutine starts, so the webhook client called inside it reports to that one.
        steps = await self.registrar.begin(deliveries)
        timed: list[Step] = []
        for delivery, step in zip(deliveries, steps, strict=True):
            request = delivery.event
            if not isinstance(request, RegisterReceived) or isinstance(step, BaseException):
                timed.append(step)
            elif isinstance(step, Outcome):
                self._observe(request, step, None, None)
                timed.append(step)
            else:
                timed.append(self._timed(request, step))
        return timed

    async def _timed(self, request: RegisterReceived, step: Awaitable[Outcome]) -> Outcome:
        call = AuthCall()
        token = current_auth_call.set(call)
        started = time.perf_counter()
        try:
            outcome = await step
        finally:
            current_auth_call.reset(token)
        self._observe(request, outcome, call, time.perf_counter() - started)
        return outcome

    def _observe(self, request: RegisterReceived, outcome: Outcome, call: AuthCall | None, io_s: float | None) -> None:
        answered = answer_path(outcome, call)
        if answered is None:
            return
        status, path = answered
        waited_s = max(0.0, self._clock() - request.occurred_at.timestamp())
        self._metrics.registration_answered(status, path, waited_s)
        if status not in (200, 403):
            return
        if path == "webhook" and call is not None and call.webhook_s is not None:
            self._metrics.auth_answered(path, status, call.webhook_s)
        elif path == "clients" and io_s is not None:
            self._metrics.auth_answered(path, status, io_s)
