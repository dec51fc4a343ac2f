"""The per-account webhook gate: concurrent calls bounded per account, a circuit breaker per account."""

from __future__ import annotations

import asyncio

from processors.registrar.facts import WebhookFailure, WebhookVerdict
from processors.registrar.tenants import WebhookGate

OK = WebhookVerdict(http_status=200, body={"status": "ok"})
TIMED_OUT = WebhookVerdict(failure=WebhookFailure.TIMEOUT)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answering(verdict: WebhookVerdict, calls: list[str], name: str = "call"):  # type: ignore[no-untyped-def]
    async def call() -> WebhookVerdict:
        calls.append(name)
        return verdict

    return call


async def test_the_circuit_opens_after_consecutive_failures_and_answers_without_calling() -> None:
    clock = Clock()
    gate = WebhookGate(max_concurrency=10, breaker_failures=3, open_s=30.0, clock=clock)
    calls: list[str] = []
    for _ in range(3):
        assert (await gate.call("acme", answering(TIMED_OUT, calls), max_wait_s=1)).failure is WebhookFailure.TIMEOUT
    assert len(calls) == 3
    verdict = await gate.call("acme", answering(OK, calls), max_wait_s=1)
    assert verdict.failure is WebhookFailure.CIRCUIT_OPEN and len(calls) == 3  # no call made
    # Another account is not affected.
    assert (await gate.call("other", answering(OK, calls), max_wait_s=1)) == OK
    assert gate.metrics()["webhook_circuits_open"] == 1
    assert gate.stats.circuits_opened == 1 and gate.stats.short_circuited == 1


async def test_after_the_open_time_one_trial_call_closes_or_reopens_the_circuit() -> None:
    clock = Clock()
    gate = WebhookGate(max_concurrency=10, breaker_failures=2, open_s=30.0, clock=clock)
    calls: list[str] = []
    for _ in range(2):
        await gate.call("acme", answering(TIMED_OUT, calls), max_wait_s=1)
    clock.now += 31
    assert (
        await gate.call("acme", answering(TIMED_OUT, calls, "trial"), max_wait_s=1)
    ).failure is WebhookFailure.TIMEOUT
    assert calls[-1] == "trial"
    # The failed trial opened it again, for another open_s.
    assert (await gate.call("acme", answering(OK, calls), max_wait_s=1)).failure is WebhookFailure.CIRCUIT_OPEN
    clock.now += 31
    assert await gate.call("acme", answering(OK, calls, "trial2"), max_wait_s=1) == OK
    assert await gate.call("acme", answering(OK, calls, "after"), max_wait_s=1) == OK  # closed again
    assert calls[-2:] == ["trial2", "after"]


async def test_while_a_trial_is_in_flight_the_others_fail_fast() -> None:
    clock = Clock()
    gate = WebhookGate(max_concurrency=10, breaker_failures=1, open_s=5.0, clock=clock)
    await gate.call("acme", answering(TIMED_OUT, []), max_wait_s=1)
    clock.now += 6
    release = asyncio.Event()

    async def slow_trial() -> WebhookVerdict:
        await release.wait()
        return OK

    trial = asyncio.create_task(gate.call("acme", slow_trial, max_wait_s=1))
    await asyncio.sleep(0)
    calls: list[str] = []
    assert (await gate.call("acme", answering(OK, calls), max_wait_s=1)).failure is WebhookFailure.CIRCUIT_OPEN
    assert calls == []
    release.set()
    assert await trial == OK


async def test_an_answer_of_any_status_resets_the_failure_count() -> None:
    gate = WebhookGate(max_concurrency=10, breaker_failures=2, open_s=30.0, clock=Clock())
    calls: list[str] = []
    for verdict in (TIMED_OUT, WebhookVerdict(http_status=404), TIMED_OUT, OK):
        await gate.call("acme", answering(verdict, calls), max_wait_s=1)
    assert len(calls) == 4 and gate.stats.circuits_opened == 0


async def test_calls_beyond_the_accounts_bound_wait_only_for_that_account_and_give_up_at_their_deadline() -> None:
    gate = WebhookGate(max_concurrency=2, breaker_failures=0, clock=Clock())
    release = asyncio.Event()
    started: list[str] = []

    async def hanging() -> WebhookVerdict:
        started.append("hang")
        await release.wait()
        return OK

    busy = [asyncio.create_task(gate.call("slow", hanging, max_wait_s=5)) for _ in range(2)]
    await asyncio.sleep(0)
    assert len(started) == 2
    # The third call of the same account waits for a slot, and gives up when its time is out.
    verdict = await gate.call("slow", hanging, max_wait_s=0.05)
    assert verdict.failure is WebhookFailure.BUSY and len(started) == 2
    # Another account is served at once.
    calls: list[str] = []
    assert await asyncio.wait_for(gate.call("fast", answering(OK, calls), max_wait_s=0), 1) == OK
    release.set()
    assert [v.http_status for v in await asyncio.gather(*busy)] == [200, 200]
    assert gate.stats.busy == 1


async def test_no_breaker_when_failures_is_zero() -> None:
    gate = WebhookGate(max_concurrency=5, breaker_failures=0, clock=Clock())
    calls: list[str] = []
    for _ in range(20):
        await gate.call("acme", answering(TIMED_OUT, calls), max_wait_s=1)
    assert len(calls) == 20


async def test_a_call_waiting_for_a_slot_when_the_circuit_opens_is_not_made() -> None:
    clock = Clock()
    gate = WebhookGate(max_concurrency=1, breaker_failures=1, open_s=30.0, clock=clock)
    release = asyncio.Event()
    made: list[str] = []

    async def hanging_then_timeout() -> WebhookVerdict:
        made.append("first")
        await release.wait()
        return TIMED_OUT

    first = asyncio.create_task(gate.call("acme", hanging_then_timeout, max_wait_s=5))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(gate.call("acme", answering(OK, made, "second"), max_wait_s=5))
    await asyncio.sleep(0)
    release.set()  # the first call fails and opens the circuit while the second waits for the slot
    assert (await first).failure is WebhookFailure.TIMEOUT
    assert (await waiting).failure is WebhookFailure.CIRCUIT_OPEN
    assert made == ["first"]
