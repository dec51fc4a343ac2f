"""One rung at a time: a bounded sipp run at a fixed rate, the probe beside it, CPU around it.

A step holds when every sipp call succeeded with no retransmission, sipp reached at least
RATE_FLOOR of the asked rate, no probe transaction failed, and every service process is alive.
A ladder climbs its rates and stops at the first step that does not hold (unless told to climb on).
Beside the verdict, a step reports what sipp retransmitted and how many probe registrations found
their jambonz record missing right after their 200 OK (which does not fail the step).
"""

from __future__ import annotations

import asyncio
import itertools
import resource
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.cpu import CpuMeter, CpuSpent, process_cpu_s, udp_errors, udp_socket_drops
from bench.digest import PROBE_FIRST_USER
from bench.probe import Probe, ProbeResult
from bench.records import RecordCheck
from bench.sidecar import RunningService
from bench.sipp import Sipp, SippRun

RATE_FLOOR = 0.9
SETTLE_IDLE_FRACTION = 0.10  # of one core, over SETTLE_WINDOW_S
SETTLE_WINDOW_S = 0.5
SETTLE_MAX_S = 20.0
# CPU of the system under test: our processes, Redis and the webhook (not sipp, not the probe).
SYSTEM_PARTS = ("service", "redis", "webhook")


@dataclass
class StepResult:
    kind: str
    rate_per_s: int
    sipp: SippRun
    probe: ProbeResult
    cpu: CpuSpent
    sipp_cpu_s: float
    bench_client_cpu_s: float
    webhook_counts: dict[str, int] = field(default_factory=dict)
    udp_errors: dict[str, int] = field(default_factory=dict)
    redis_calls: dict[str, int] = field(default_factory=dict)
    service_rss_mb: float | None = None  # resident memory of the service processes at the end of the step
    webhook_delay_ms: int = 0
    reasons: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return not self.reasons

    @property
    def retransmissions(self) -> int:
        return self.sipp.retransmissions

    @property
    def record_missing(self) -> int | None:
        """Probe registrations that found their record missing right after the 200 (None: not checked)."""
        return self.probe.records.missing if self.probe.records is not None else None

    @property
    def operations(self) -> int:
        """Registrations (or OPTIONS) completed in the step: sipp's and the probe's."""
        return self.sipp.successful + len(self.probe.latencies_ms)

    def cpu_us_per_op(self) -> dict[str, float | None]:
        if not self.operations:
            return {name: None for name in (*SYSTEM_PARTS, "system", "sipp")}
        per: dict[str, float | None] = {
            name: round(self.cpu.by_part_s.get(name, 0.0) * 1e6 / self.operations, 1) for name in SYSTEM_PARTS
        }
        per["system"] = round(self.cpu.total_s(SYSTEM_PARTS) * 1e6 / self.operations, 1)
        per["sipp"] = round(self.sipp_cpu_s * 1e6 / self.operations, 1)
        return per

    def as_dict(self) -> dict[str, object]:
        known_s = self.cpu.total_s(SYSTEM_PARTS) + self.sipp_cpu_s + self.bench_client_cpu_s
        return {
            "kind": self.kind,
            "rate_per_s": self.rate_per_s,
            "holds": self.holds,
            "reasons": self.reasons,
            "webhook_delay_ms": self.webhook_delay_ms,
            "retransmissions": self.retransmissions,
            "record_missing": self.record_missing,
            "sipp": self.sipp.as_dict(),
            "probe": self.probe.summary(),
            "cpu_s": {
                **self.cpu.by_part_s,
                "sipp": round(self.sipp_cpu_s, 3),
                "bench_client": round(self.bench_client_cpu_s, 3),
                "machine_busy": self.cpu.machine_busy_s,
                "machine_total": self.cpu.machine_total_s,
                "machine_other": round(max(0.0, self.cpu.machine_busy_s - known_s), 3),
            },
            "cpu_us_per_op": self.cpu_us_per_op(),
            "webhook": self.webhook_counts,
            "udp_errors": self.udp_errors,
            "redis_calls_per_op": self.redis_calls_per_op(),
            "service_rss_mb": self.service_rss_mb,
        }

    def redis_calls_per_op(self) -> dict[str, float]:
        """Redis commands per registration (or OPTIONS), most frequent first, with their sum."""
        if not self.operations:
            return {}
        ordered = sorted(self.redis_calls.items(), key=lambda item: -item[1])
        per = {name: round(calls / self.operations, 3) for name, calls in ordered if calls}
        return {"all": round(sum(self.redis_calls.values()) / self.operations, 3), **per}


def judge(step: StepResult, service: RunningService) -> list[str]:
    """Why the step does not hold (empty when it holds)."""
    run, reasons = step.sipp, []
    if run.returncode != 0:
        reasons.append(f"sipp exited {run.returncode}")
    if run.failed:
        reasons.append(f"{run.failed} calls failed {run.failures}")
    if run.successful < run.calls:
        reasons.append(f"{run.successful}/{run.calls} calls succeeded")
    if run.retransmissions:
        reasons.append(f"{run.retransmissions} retransmissions")
    if run.achieved_per_s < RATE_FLOOR * run.rate_per_s:
        reasons.append(f"sipp reached {run.achieved_per_s:.0f}/s of {run.rate_per_s}/s")
    if step.probe.failures:
        reasons.append(f"probe failures {dict(step.probe.failures)}")
    if not step.probe.latencies_ms:
        reasons.append("no probe transaction completed")
    for child in service.dead():
        reasons.append(f"{child.name} died ({child.process.returncode})")
    return reasons


def count_difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """The counters that moved between two readings, by how much."""
    return {name: count - before.get(name, 0) for name, count in after.items() if count - before.get(name, 0)}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Ladder:
    """Runs steps against one running service; numbers users so that each registration is new."""

    service: RunningService
    sipp: Sipp
    meter: CpuMeter
    probe_rate_per_s: float
    user_password: str
    webhook_counts: Callable[[], Awaitable[dict[str, int]]]
    redis_calls: Callable[[], Awaitable[dict[str, int]]]
    records: RecordCheck | None = None
    webhook_delay_ms: int = 0
    next_user: int = 0
    probe_users: Iterator[int] = field(default_factory=lambda: itertools.count(PROBE_FIRST_USER))

    async def step(
        self,
        kind: str,
        rate_per_s: int,
        duration_s: float,
        beside: Callable[[], Coroutine[Any, Any, object]] | None = None,
    ) -> StepResult:
        """One bounded step; `beside` runs alongside the load (a profiler)."""
        await self.settle()
        first_user = self.next_user
        if kind == "register":
            self.next_user += round(rate_per_s * duration_s)
            if self.next_user > PROBE_FIRST_USER:
                raise RuntimeError(f"the ladder needs more than the {PROBE_FIRST_USER} sipp users; shorten it")
        hook_before, udp_before, calls_before = await self.webhook_counts(), udp_errors(), await self.redis_calls()
        drops_before = udp_socket_drops(self.service.sip_port)
        stop_probe = asyncio.Event()
        async with Probe(
            self.service.sip_port, kind=kind, password=self.user_password, users=self.probe_users, records=self.records
        ) as probe:
            before, sipp_before, self_before = self.meter.snapshot(), _children_cpu_s(), _self_cpu_s()
            async with asyncio.TaskGroup() as group:
                probe_task = group.create_task(probe.run(self.probe_rate_per_s, stop_probe))
                if beside is not None:
                    group.create_task(beside())
                try:
                    run = await self.sipp.run(kind, rate_per_s, duration_s, first_user=first_user)
                finally:
                    stop_probe.set()
            after, sipp_after, self_after = self.meter.snapshot(), _children_cpu_s(), _self_cpu_s()
        hook_after, udp_after, calls_after = await self.webhook_counts(), udp_errors(), await self.redis_calls()
        drops_after = udp_socket_drops(self.service.sip_port)
        if drops_before is not None and drops_after is not None:
            udp_after = {**udp_after, "service_socket_drops": drops_after - drops_before}
        step = StepResult(
            kind,
            rate_per_s,
            run,
            probe_task.result(),
            CpuSpent.between(before, after),
            sipp_cpu_s=sipp_after - sipp_before,
            bench_client_cpu_s=self_after - self_before,
            webhook_counts=count_difference(hook_after, hook_before),
            udp_errors={k: v - udp_before.get(k, 0) for k, v in udp_after.items()},
            redis_calls=count_difference(calls_after, calls_before),
            service_rss_mb=_rss_mb([child.pid for child in self.service.children]),
            webhook_delay_ms=self.webhook_delay_ms,
        )
        step.reasons = judge(step, self.service)
        return step

    async def climb(
        self,
        kind: str,
        rates: Sequence[int],
        duration_s: float,
        report: Callable[[StepResult], None],
        beside_at: Callable[[str, int], Callable[[], Coroutine[Any, Any, object]] | None] | None = None,
        *,
        past_failure: bool = False,
    ) -> list[StepResult]:
        """Steps up `rates` until one does not hold (that one is kept too); with `past_failure`, runs
        every rate while the service lives."""
        steps = []
        for rate in rates:
            beside = beside_at(kind, rate) if beside_at else None
            step = await self.step(kind, rate, duration_s, beside)
            steps.append(step)
            report(step)
            if self.service.dead() or not (step.holds or past_failure):
                break
        return steps

    async def idle_cpu(self, seconds: float = 3.0) -> dict[str, float]:
        """CPU share of one core that each part burns with no load at all (polling, timers)."""
        await self.settle()
        before = self.meter.snapshot()
        await asyncio.sleep(seconds)
        spent = CpuSpent.between(before, self.meter.snapshot())
        return {name: round(value / seconds, 3) for name, value in spent.by_part_s.items()}

    async def settle(self) -> None:
        await settle(self.service)


async def settle(service: RunningService) -> None:
    """Waits until the service is nearly idle (a backlog of the last step drained), bounded."""
    pids = [child.pid for child in service.children]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_MAX_S
    while loop.time() < deadline:
        before = sum(process_cpu_s(pid) or 0.0 for pid in pids)
        await asyncio.sleep(SETTLE_WINDOW_S)
        spent = sum(process_cpu_s(pid) or 0.0 for pid in pids) - before
        if spent < SETTLE_IDLE_FRACTION * SETTLE_WINDOW_S * len(pids):
            return


def _rss_mb(pids: Sequence[int]) -> float | None:
    """Sum of VmRSS of live processes, in MiB."""
    total_kb = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
                        break
        except (OSError, ValueError):
            return None
    return round(total_kb / 1024, 1)
