"""`bench/run`: the registration and OPTIONS ladders against the sidecar, the tenant-isolation
scenario (--isolation) or the soak (--soak), with a JSON report. The options: bench/options.py."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from bench.cpu import CpuMeter, calibrate, cpu_model
from bench.digest import PROBE_FIRST_USER, REALM
from bench.footprint import RedisFootprint
from bench.infrastructure import BenchDatabase, BenchRedis, BenchRedisCluster, Servers, Tenant, free_port
from bench.isolation import HUNG_REALM, IsolationScenario, Phase, isolation_line, phase_line, verdict
from bench.ladder import Ladder, StepResult
from bench.options import build_parser
from bench.phones import Fleet
from bench.processes import ProcessGroup
from bench.profiler import recorder, top_costs
from bench.records import RecordCheck
from bench.rediscluster import start_cluster
from bench.report import git_commit, last_line, step_line, summary, write_results
from bench.sidecar import Layout, RunningService, start_service, start_webhook, webhook_counts
from bench.sipp import MAX_RUN_S, Sipp
from bench.soak import ARCHIVE_TABLE, Soak, SoakPlan, round_line, soak_line
from runtime.compiled import compiled_modules

SMOKE = {"register": (20, 3.0), "options": (200, 2.0)}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Webhook:
    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/auth"

    async def counts(self) -> dict[str, int]:
        return await webhook_counts(self.port)


@dataclass(frozen=True)
class Stage:
    """What the ladders (or the isolation scenario) share: the process group, the service environment,
    the tenant and its webhook, Redis, the record check; with --isolation, the tenant whose webhook hangs."""

    processes: ProcessGroup
    base_env: dict[str, str]
    tenant: Tenant
    redis: BenchRedis
    webhook: Webhook
    redis_pids: list[int]
    records: RecordCheck
    hung: tuple[Tenant, Webhook] | None = None


class BenchRun:
    """One run: infrastructure up, service up, ladders, report; everything down again."""

    def __init__(self, args: argparse.Namespace, work_dir: Path) -> None:
        self.args = args
        self.work_dir = work_dir
        self.layout = Layout(split=args.split, processors=args.processors, ingests=args.ingests, command=args.sidecar)
        self.profiles: dict[str, object] = {}
        self.idle_cpu: dict[str, float] = {}
        self.calibration: dict[str, float] = {}

    def plan(self) -> dict[str, tuple[Sequence[int], float]]:
        if self.args.smoke:
            return {kind: ((rate,), duration) for kind, (rate, duration) in SMOKE.items()}
        duration = min(self.args.duration, MAX_RUN_S - 5)
        return {"register": (self.args.register_rates, duration), "options": (self.args.options_rates, duration)}

    async def run(self) -> int:
        self.calibration = {f"start_{k}": v for k, v in calibrate().items()}
        servers = Servers()
        await servers.ensure()
        try:
            return await self._with_servers()
        finally:
            if not self.args.keep_services:
                await servers.stop_started()

    async def _with_servers(self) -> int:
        # the soak's records must be its own: a realm per run (another bench run cleans bench.local's)
        tenant = Tenant(realm=f"soak-{secrets.token_hex(3)}.{REALM}") if self.args.soak else Tenant()
        hung_tenant = Tenant(realm=HUNG_REALM, name="bench-hung") if self.args.isolation else None
        realms = [t.realm for t in (tenant, hung_tenant) if t is not None]
        database = BenchDatabase()
        cluster_id = f"bench-{secrets.token_hex(3)}"
        local = start_cluster(self.work_dir / "redis-cluster", persistent=False) if self.args.redis_cluster else None
        if local is None:
            redis: BenchRedis = BenchRedis(self.args.redis_db, cluster_id)
        else:
            redis = BenchRedisCluster(local, cluster_id, self.args.partitions)
        try:
            async with ProcessGroup(self.work_dir) as processes, RecordCheck(redis.new_client()) as records:
                webhook = await _webhook(processes, tenant, delay_ms=self.args.webhook_delay_ms)
                await database.create(tenant, webhook.url)
                hung = None
                if hung_tenant is not None:
                    hung = hung_tenant, await _webhook(processes, hung_tenant, hang=True, name="webhook-hung")
                    await database.add_account(hung_tenant, hung[1].url)
                await redis.clean(realms)
                stage = Stage(
                    processes,
                    {**database.env(), **redis.env(), "ENCRYPTION_SECRET": secrets.token_hex(16)},
                    tenant,
                    redis,
                    webhook,
                    await redis.server_pids(),
                    records,
                    hung,
                )
                if self.args.soak:
                    soak = await self._soak(stage, database)
                elif hung is not None:
                    phases = await self._isolate(stage)
                else:
                    results = await self._climb(stage)
                memory = await redis.used_memory_bytes()
            self.calibration.update({f"end_{k}": v for k, v in calibrate().items()})
            say(f"[bench] machine speed, a fixed workload before and after (lower is faster): {self.calibration}")
        finally:
            await redis.clean(realms)
            await redis.close()
            await database.drop()
            if local is not None:
                local.stop()
        if self.args.soak:
            return self._report_soak(soak, redis_memory_bytes=memory)
        if hung is not None:
            return self._report_isolation(phases, redis_memory_bytes=memory)
        return self._report(*results, redis_memory_bytes=memory)

    async def _climb(self, stage: Stage) -> tuple[list[StepResult], list[StepResult]]:
        """Each ladder against a service of its own: the tail of a failed registration step (late
        retransmissions, re-claimed entries) must not land in the OPTIONS ladder."""
        plan = self.plan()
        climbed: dict[str, list[StepResult]] = {}
        for kind in ("register", "options"):
            rates, duration_s = plan[kind]
            say(f"[bench] starting the service for the {kind} ladder: {self.layout.mode}")
            service = await start_service(stage.processes, self.layout, stage.base_env)
            try:
                ladder = self._ladder(stage, service)
                if kind == "register":
                    self.idle_cpu = await ladder.idle_cpu(1.0 if self.args.smoke else 3.0)
                    say(f"[bench] idle CPU, share of one core: {self.idle_cpu}")
                climbed[kind] = await ladder.climb(
                    kind,
                    rates,
                    duration_s,
                    self._print_step,
                    self._beside(service, duration_s),
                    past_failure=self.args.all_steps,
                )
            finally:
                for child in service.children:
                    await stage.processes.stop(child)
        return climbed["register"], climbed["options"]

    async def _isolate(self, stage: Stage) -> list[Phase]:
        """The isolation scenario against a service of its own: healthy, then with B's webhook hung."""
        assert stage.hung is not None
        hung_tenant, hung_webhook = stage.hung
        duration_s = min(self.args.duration, MAX_RUN_S - 5)
        say(f"[bench] starting the service for the isolation scenario: {self.layout.mode}")
        service = await start_service(stage.processes, self.layout, stage.base_env)
        try:
            meter = self._meter(stage, service)
            meter.add("webhook_hung", hung_webhook.pid)
            scenario = IsolationScenario(
                service,
                self._sipp(stage, service),
                stage.tenant,
                hung_tenant,
                stage.records,
                meter,
                {"a": stage.webhook.counts, "b": hung_webhook.counts},
                a_rate_per_s=self.args.isolation_rate,
                b_rate_per_s=self.args.hung_rate,
                heartbeat_rate_per_s=self.args.heartbeat_rate,
                probe_rate_per_s=self.args.probe_rate,
            )
            return await scenario.run(duration_s, lambda phase: say(phase_line(phase)))
        finally:
            for child in service.children:
                await stage.processes.stop(child)

    async def _soak(self, stage: Stage, database: BenchDatabase) -> Soak:
        """The soak against a service of its own; its rounds are reported on stderr as they end."""
        plan = SoakPlan(
            phones=self.args.phones,
            rounds=self.args.rounds,
            rate_per_s=self.args.soak_rate,
            change_every=self.args.change_every,
            change_percent=self.args.change_percent,
        )
        say(f"[bench] starting the service for the soak: {self.layout.mode}; {plan.as_dict()}")
        service = await start_service(stage.processes, self.layout, stage.base_env)
        footprint = RedisFootprint(stage.redis.new_client(), stage.redis.cluster_id, stage.tenant.realm)
        try:
            password, port = stage.tenant.user_password, service.sip_port
            async with Fleet(plan.phones, target_port=port, realm=stage.tenant.realm, password=password) as fleet:
                soak = Soak(service, fleet, footprint, lambda: database.count_rows(ARCHIVE_TABLE), plan)
                await soak.run(lambda measured: say(round_line(soak, measured)))
            return soak
        finally:
            await footprint.client.aclose()
            for child in service.children:
                await stage.processes.stop(child)

    @staticmethod
    def _meter(stage: Stage, service: RunningService) -> CpuMeter:
        meter = CpuMeter()
        for child in service.children:
            meter.add("service", child.pid)
            if len(service.children) > 1:  # split: each process too, to see how the work spreads
                meter.add(f"service/{child.name}", child.pid)
        for pid in stage.redis_pids:  # a Cluster: every master's CPU counts as Redis's
            meter.add("redis", pid)
        meter.add("webhook", stage.webhook.pid)
        return meter

    def _sipp(self, stage: Stage, service: RunningService) -> Sipp:
        return Sipp(
            self.work_dir,
            stage.processes,
            target_port=service.sip_port,
            password=stage.tenant.user_password,
            local_port=free_port(),
            realm=stage.tenant.realm,
        )

    def _ladder(self, stage: Stage, service: RunningService) -> Ladder:
        probe_rate = self.args.probe_rate / (2 if self.args.smoke else 1)
        return Ladder(
            service,
            self._sipp(stage, service),
            self._meter(stage, service),
            probe_rate,
            stage.tenant.user_password,
            stage.webhook.counts,
            stage.redis.command_calls,
            records=stage.records,
            webhook_delay_ms=self.args.webhook_delay_ms,
        )

    def _beside(
        self, service: RunningService, duration_s: float
    ) -> Callable[[str, int], Callable[[], Coroutine[Any, Any, object]] | None]:
        def at(kind: str, rate: int) -> Callable[[], Coroutine[Any, Any, object]] | None:
            if kind != "register" or rate != self.args.profile:
                return None
            record = recorder(service.children, duration_s, self.work_dir, f"profile-{rate}")

            async def profile() -> None:
                for path in await record():
                    if path.exists():
                        name = path.stem.removeprefix(f"profile-{rate}-")
                        self.profiles[name] = {"rate_per_s": rate, **top_costs(path)}
                        kept = self.args.results_dir / f"profile-{rate}-{name}.txt"
                        self.args.results_dir.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(path, kept)

            return profile

        return at

    @staticmethod
    def _print_step(step: StepResult) -> None:
        say(step_line(step))

    def _context(self, redis_memory_bytes: int) -> dict[str, object]:
        """What ran, where, on which machine: the same in every report."""
        return {
            "mode": self.layout.mode,
            "sidecar": self.layout.command,
            # which modules of this checkout ran compiled (meaningless for a --sidecar of another tree)
            "compiled_modules": compiled_modules(),
            "split": self.layout.split,
            "processors": self.layout.processors if self.layout.split else None,
            # a local Redis Cluster of three masters, SIDECAR_PARTITIONS=3 (else one Redis, one partition)
            "redis_cluster": self.args.redis_cluster,
            "partitions": self.args.partitions if self.args.redis_cluster else 1,
            "smoke": self.args.smoke,
            "git": git_commit(),
            "machine": {
                "cpus": os.cpu_count(),
                "cpu_model": cpu_model(),
                "calibration": self.calibration,
                "python": platform.python_version(),
                "loadavg": os.getloadavg(),
                "redis_used_memory_bytes": redis_memory_bytes,
            },
        }

    def _report_isolation(self, phases: list[Phase], *, redis_memory_bytes: int) -> int:
        healthy, hung = phases
        numbers = verdict(healthy, hung)
        line = isolation_line(numbers)
        document: dict[str, object] = {
            "line": line,
            "isolation": numbers,
            **self._context(redis_memory_bytes),
            "config": {
                "duration_s": min(self.args.duration, MAX_RUN_S - 5),
                "a_rate_per_s": self.args.isolation_rate,
                "b_rate_per_s": self.args.hung_rate,
                "heartbeat_rate_per_s": self.args.heartbeat_rate,
                "probe_rate_per_s": self.args.probe_rate,
                "webhook_delay_ms": self.args.webhook_delay_ms,
                # B's calls end at the service's webhook deadline: the one in this environment, else its default
                "webhook_timeout_s": os.environ.get("SIDECAR_WEBHOOK_TIMEOUT_S", "service default"),
                "realms": {"a": REALM, "b": HUNG_REALM},
            },
            "healthy": healthy.as_dict(),
            "hung": hung.as_dict(),
        }
        met = {name: numbers[name] for name in ("a_target_met", "heartbeat_target_met")}
        say(f"[bench] isolation targets (A p99 within 20 ms of healthy, heartbeat p99 < 10 ms): {met}")
        path = write_results(self.args.results_dir, document, suffix="-isolation")
        say(f"[bench] results: {path}")
        print(line, flush=True)
        return 0

    def _report_soak(self, soak: Soak, *, redis_memory_bytes: int) -> int:
        numbers = soak.summary()
        line = soak_line(soak.plan, numbers)
        document: dict[str, object] = {
            "line": line,
            "soak": numbers,
            **self._context(redis_memory_bytes),
            "config": {
                **soak.plan.as_dict(),
                "webhook_delay_ms": self.args.webhook_delay_ms,
                "realm": soak.fleet.realm,
                "archive_table": ARCHIVE_TABLE,
            },
            **soak.as_dict(),
        }
        say(f"[bench] soak bytes per phone by part: {numbers['bytes_per_phone_by_part']}")
        if numbers["refreshes_challenged"]:
            say(
                f"[bench] soak: {numbers['refreshes_challenged']} refreshes from an unchanged source were challenged: "
                "their cached binding was gone or changed (another client of this Redis?)"
            )
        say(f"[bench] soak targets of issue 12: {numbers['targets_met']}")
        path = write_results(self.args.results_dir, document, suffix="-soak")
        say(f"[bench] results: {path}")
        print(line, flush=True)
        return 0

    def _report(self, register: list[StepResult], options: list[StepResult], *, redis_memory_bytes: int) -> int:
        numbers = summary(register, options)
        line = last_line(numbers)
        plan = self.plan()
        document: dict[str, object] = {
            "line": line,
            "summary": numbers,
            **self._context(redis_memory_bytes),
            "idle_cpu_share_of_core": self.idle_cpu,
            "config": {
                "duration_s": {k: v[1] for k, v in plan.items()},
                "probe_rate_per_s": self.args.probe_rate,
                "register_rates": list(plan["register"][0]),
                "options_rates": list(plan["options"][0]),
                "webhook_delay_ms": self.args.webhook_delay_ms,
                "all_steps": self.args.all_steps,
            },
            "register": [step.as_dict() for step in register],
            "options": [step.as_dict() for step in options],
        }
        if self.profiles:
            document["profile"] = self.profiles
            for name, costs in self.profiles.items():
                say(f"[bench] profile {name}: top self time")
                for row in costs["self"]:  # type: ignore[index]
                    say(f"[bench]   {row['percent']:5.1f}%  {row['function']}")
                for view in ("self_by_package", "by_task", "total"):
                    say(f"[bench] profile {name}: {view.replace('_', ' ')}")
                    for row in costs[view][:10]:  # type: ignore[index]
                        say(f"[bench]   {row['percent']:5.1f}%  {row['function']}")
        path = write_results(self.args.results_dir, document, suffix="-smoke" if self.args.smoke else "")
        say(f"[bench] results: {path}")
        print(line, flush=True)
        if self.args.smoke:
            return 0 if register and options and all(s.holds for s in register + options) else 1
        return 0


async def _webhook(
    processes: ProcessGroup, tenant: Tenant, *, delay_ms: int = 0, hang: bool = False, name: str = "webhook"
) -> Webhook:
    child, port = await start_webhook(processes, tenant, delay_ms=delay_ms, hang=hang, name=name)
    return Webhook(child.pid, port)


async def _main(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    work_dir = Path(tempfile.mkdtemp(prefix="sbc-bench-"))
    failed = True
    try:
        status = await BenchRun(args, work_dir).run()
        failed = False
        return status
    except asyncio.CancelledError:
        failed = False  # interrupted: nothing to look into
        raise
    finally:
        if failed or args.keep_work:
            say(f"[bench] work directory kept: {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.processors < 1:
        say("bench/run: --processors must be at least 1")
        return 2
    if args.phones > PROBE_FIRST_USER or not 0 <= args.change_percent <= 100:
        say(f"bench/run: --phones goes up to {PROBE_FIRST_USER}, --change-percent from 0 to 100")
        return 2
    if args.soak and (args.isolation or args.smoke or args.profile or args.split):
        say(
            "bench/run: --soak runs instead of the ladders, in one process; no --isolation, --smoke, --profile, --split"
        )
        return 2
    if args.redis_cluster and args.soak:
        say("bench/run: --soak measures one Redis's keys; it does not run on --redis-cluster")
        return 2
    if args.isolation and (args.smoke or args.profile):
        say("bench/run: --isolation runs instead of the ladders; it takes neither --smoke nor --profile")
        return 2
    try:
        return uvloop.run(_main(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("[bench] interrupted; everything it started is stopped")
        return 130
    except RuntimeError as exc:
        say(f"bench/run: {exc}")
        return 1
