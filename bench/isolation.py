"""Tenant isolation (issue 11): while one account's webhook hangs, do the others still register,
and do the feature servers' heartbeats still get their answers?

Two accounts on one service, each with a registration webhook of its own: A (realm bench.local)
with a healthy webhook (answering after --webhook-delay-ms), and B (realm hung.bench.local) whose
webhook never answers, so every registration of B waits the service's SIDECAR_WEBHOOK_TIMEOUT_S.
Two phases against one freshly started service, with the same load of A in both:

- healthy: sipp registers A's users at `a_rate_per_s`; the probe times A's full registrations (and
  reads their records right after the 200); a feature server's heartbeat (OPTIONS with
  `X-FS-Status: open`, from one source address) is timed request → 200 at `heartbeat_rate_per_s`;
- hung: the same, with B's phones registering at `b_rate_per_s` beside it (an asyncio client
  without retransmissions, started B_LEAD_S before the rest, so A's load meets webhooks already held).

The probes wait up to STALLED_ANSWER_TIMEOUT_S for an answer, beyond the ingest's reply deadline
(SIDECAR_REPLY_TIMEOUT_S, 10 s): a stalled transaction is measured, not cut short. The targets of
issue 11 (A's p99 within 20 ms of the healthy phase, heartbeat p99 under 10 ms) are recorded with
the numbers; missing them does not make the run fail.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from bench.cpu import CpuMeter, CpuSpent
from bench.digest import PROBE_FIRST_USER
from bench.infrastructure import Tenant
from bench.ladder import count_difference, settle
from bench.probe import Probe, ProbeResult
from bench.records import RecordCheck
from bench.sidecar import RunningService
from bench.sipp import Sipp, SippRun

HUNG_REALM = "hung.bench.local"
B_LEAD_S = 1.0
STALLED_ANSWER_TIMEOUT_S = 15.0
A_P99_EXCESS_TARGET_MS = 20.0
HEARTBEAT_P99_TARGET_MS = 10.0


@dataclass
class Phase:
    """One phase: A's sipp run, A's probe, the heartbeat probe and, when hung, B's registrations."""

    name: str
    sipp: SippRun
    a_probe: ProbeResult
    heartbeat: ProbeResult
    b_client: ProbeResult | None
    webhook_counts: dict[str, dict[str, int]]
    cpu: CpuSpent

    def as_dict(self) -> dict[str, object]:
        return {
            "sipp_a": self.sipp.as_dict(),
            "retransmissions_a": self.sipp.retransmissions,
            "probe_a": self.a_probe.summary(),
            "heartbeat": self.heartbeat.summary(),
            "b": self.b_client.summary() if self.b_client is not None else None,
            "webhook": self.webhook_counts,
            "cpu_s": {**self.cpu.by_part_s, "machine_busy": self.cpu.machine_busy_s},
        }


def p99_ms(result: ProbeResult) -> float | None:
    value = result.summary()["p99_ms"]
    return float(value) if isinstance(value, int | float) else None


def verdict(healthy: Phase, hung: Phase) -> dict[str, object]:
    """The numbers issue 11 sets targets on, and whether they were met (None: not measurable)."""
    a_healthy, a_hung, heartbeat = p99_ms(healthy.a_probe), p99_ms(hung.a_probe), p99_ms(hung.heartbeat)
    excess = None if a_hung is None or a_healthy is None else round(a_hung - a_healthy, 3)
    a_met = excess is not None and excess <= A_P99_EXCESS_TARGET_MS and not hung.a_probe.failures
    heartbeat_met = heartbeat is not None and heartbeat < HEARTBEAT_P99_TARGET_MS and not hung.heartbeat.failures
    return {
        "a_p99_ms": a_hung,
        "a_p99_healthy_ms": a_healthy,
        "a_p99_excess_ms": excess,
        "a_failed": sum(hung.a_probe.failures.values()),
        "a_failed_healthy": sum(healthy.a_probe.failures.values()),
        "heartbeat_p99_ms": heartbeat,
        "heartbeat_p99_healthy_ms": p99_ms(healthy.heartbeat),
        "heartbeat_failed": sum(hung.heartbeat.failures.values()),
        "b_statuses": dict(hung.b_client.statuses) if hung.b_client is not None else {},
        "b_answered": hung.b_client.summary()["answered"] if hung.b_client is not None else None,
        "targets": {"a_p99_excess_ms": A_P99_EXCESS_TARGET_MS, "heartbeat_p99_ms": HEARTBEAT_P99_TARGET_MS},
        "a_target_met": a_met,
        "heartbeat_target_met": heartbeat_met,
    }


def isolation_line(numbers: dict[str, object]) -> str:
    """`isolation: A p99 X ms (healthy Y ms), heartbeat p99 Z ms, B answered: 500: n, no answer: m (after p50 W ms)`;
    failed transactions of A or of the heartbeat are counted right after the p99 they are not part of."""

    def ms(value: object) -> str:
        return f"{value:.1f}" if isinstance(value, int | float) else "n/a"

    def failed(count: object) -> str:
        return f", {count} failed" if isinstance(count, int) and count else ""

    statuses = numbers["b_statuses"]
    assert isinstance(statuses, dict)
    ordered = sorted(statuses.items(), key=lambda item: (item[0] == "timeout", item[0]))
    answered = ", ".join(f"{'no answer' if status == 'timeout' else status}: {count}" for status, count in ordered)
    waited = numbers["b_answered"]
    if isinstance(waited, dict) and waited.get("count"):
        answered += f" (after p50 {ms(waited['p50_ms'])} ms)"
    return (
        f"isolation: A p99 {ms(numbers['a_p99_ms'])} ms{failed(numbers['a_failed'])} "
        f"(healthy {ms(numbers['a_p99_healthy_ms'])} ms{failed(numbers['a_failed_healthy'])}), "
        f"heartbeat p99 {ms(numbers['heartbeat_p99_ms'])} ms"
        f"{failed(numbers['heartbeat_failed'])}, B answered: {answered or 'nothing'}"
    )


def phase_line(phase: Phase) -> str:
    a, heartbeat = phase.a_probe.summary(), phase.heartbeat.summary()
    records = a.get("record_check", {})
    missing = records.get("missing") if isinstance(records, dict) else None
    text = (
        f"[bench] isolation {phase.name:7}  A sipp {phase.sipp.successful}/{phase.sipp.calls} ok "
        f"({phase.sipp.achieved_per_s:.0f}/s) retransmissions={phase.sipp.retransmissions}  A probe p50 "
        f"{a['p50_ms']} p99 {a['p99_ms']} ms failed {a['failed']} record_missing={missing}  heartbeat p50 "
        f"{heartbeat['p50_ms']} p99 {heartbeat['p99_ms']} max {heartbeat['max_ms']} ms failed {heartbeat['failed']}"
    )
    if phase.b_client is not None:
        b = phase.b_client.summary()
        answered = b["answered"]
        assert isinstance(answered, dict)
        text += f"  B statuses {b['statuses']} after p50 {answered['p50_ms']} max {answered['max_ms']} ms"
    return text + f"  webhooks {phase.webhook_counts}"


@dataclass
class IsolationScenario:
    """A's load with and without B's hanging webhook, against one running service."""

    service: RunningService
    sipp_a: Sipp
    tenant_a: Tenant
    tenant_b: Tenant
    records: RecordCheck
    meter: CpuMeter
    webhook_counts: dict[str, Callable[[], Awaitable[dict[str, int]]]]  # by account: "a", "b"
    a_rate_per_s: int
    b_rate_per_s: float
    heartbeat_rate_per_s: float
    probe_rate_per_s: float
    next_sipp_user: int = 0
    a_probe_users: Iterator[int] = field(default_factory=lambda: itertools.count(PROBE_FIRST_USER))
    b_users: Iterator[int] = field(default_factory=lambda: itertools.count(0))

    async def run(self, duration_s: float, report: Callable[[Phase], None]) -> list[Phase]:
        phases = []
        for name, hung in (("healthy", False), ("hung", True)):
            phase = await self.phase(name, duration_s, hung=hung)
            report(phase)
            phases.append(phase)
        return phases

    async def phase(self, name: str, duration_s: float, *, hung: bool) -> Phase:
        await settle(self.service)
        first_user = self.next_sipp_user
        self.next_sipp_user += round(self.a_rate_per_s * duration_s)
        if self.next_sipp_user > PROBE_FIRST_USER:
            raise RuntimeError(f"isolation needs more than the {PROBE_FIRST_USER} sipp users; shorten it")
        counts_before = {account: await counts() for account, counts in self.webhook_counts.items()}
        stop = asyncio.Event()
        port = self.service.sip_port
        async with (
            Probe(
                port,
                password=self.tenant_a.user_password,
                users=self.a_probe_users,
                realm=self.tenant_a.realm,
                records=self.records,
                answer_timeout_s=STALLED_ANSWER_TIMEOUT_S,
            ) as a_probe,
            Probe(port, kind="heartbeat", answer_timeout_s=STALLED_ANSWER_TIMEOUT_S) as heartbeat,
            Probe(
                port,
                password=self.tenant_b.user_password,
                users=self.b_users,
                realm=self.tenant_b.realm,
                answer_timeout_s=STALLED_ANSWER_TIMEOUT_S,
            ) as b_client,
        ):
            before = self.meter.snapshot()
            async with asyncio.TaskGroup() as group:
                b_task = group.create_task(b_client.run(self.b_rate_per_s, stop)) if hung else None
                try:
                    if hung:
                        await asyncio.sleep(B_LEAD_S)
                    a_task = group.create_task(a_probe.run(self.probe_rate_per_s, stop))
                    heartbeat_task = group.create_task(heartbeat.run(self.heartbeat_rate_per_s, stop))
                    run = await self.sipp_a.run("register", self.a_rate_per_s, duration_s, first_user=first_user)
                finally:
                    stop.set()
            spent = CpuSpent.between(before, self.meter.snapshot())
        counts_after = {account: await counts() for account, counts in self.webhook_counts.items()}
        return Phase(
            name,
            run,
            a_task.result(),
            heartbeat_task.result(),
            b_task.result() if b_task is not None else None,
            {account: count_difference(counts_after[account], counts_before[account]) for account in counts_after},
            spent,
        )
