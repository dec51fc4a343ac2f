"""The bench's outputs: one JSON file per run under bench/results, a line per step, the last line.

The last line reads `registrations: N/s p50 X ms p99 Y ms cpu Z us/reg; options: M/s`: N is the
highest registration rate that held, X and Y the probe's latency at 800/s (or at the highest
holding step below it), Z the CPU of the system under test (service, Redis, webhook) per
registration at that same step, M the highest OPTIONS rate that held.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.infrastructure import REPO
from bench.ladder import StepResult

LATENCY_REFERENCE_PER_S = 800


def git_commit() -> dict[str, object]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", "--", "events", "runtime", "ingest", "processors", "projections")),
    }


def highest_holding(steps: Sequence[StepResult]) -> StepResult | None:
    holding = [step for step in steps if step.holds]
    return max(holding, key=lambda step: step.rate_per_s) if holding else None


def latency_step(steps: Sequence[StepResult]) -> StepResult | None:
    """The holding step at LATENCY_REFERENCE_PER_S, else the highest holding one below it, else the
    lowest step run (so that a failing run still shows a latency)."""
    below = [s for s in steps if s.holds and s.rate_per_s <= LATENCY_REFERENCE_PER_S]
    if below:
        return max(below, key=lambda step: step.rate_per_s)
    return min(steps, key=lambda step: step.rate_per_s) if steps else None


def summary(register: Sequence[StepResult], options: Sequence[StepResult]) -> dict[str, object]:
    top, at, top_options = highest_holding(register), latency_step(register), highest_holding(options)
    probe = at.probe.summary() if at else {}
    return {
        "registrations_per_s": top.rate_per_s if top else 0,
        "latency_at_per_s": at.rate_per_s if at else None,
        "p50_ms": probe.get("p50_ms"),
        "p99_ms": probe.get("p99_ms"),
        "cpu_us_per_reg": at.cpu_us_per_op()["system"] if at else None,
        "cpu_us_per_reg_at_highest": top.cpu_us_per_op() if top else None,
        "options_per_s": top_options.rate_per_s if top_options else 0,
        "options_cpu_us_at_highest": top_options.cpu_us_per_op() if top_options else None,
    }


def last_line(numbers: dict[str, object]) -> str:
    def ms(value: object) -> str:
        return f"{value:.1f}" if isinstance(value, int | float) else "n/a"

    cpu = numbers["cpu_us_per_reg"]
    cpu_text = f"{cpu:.0f}" if isinstance(cpu, int | float) else "n/a"
    return (
        f"registrations: {numbers['registrations_per_s']}/s p50 {ms(numbers['p50_ms'])} ms "
        f"p99 {ms(numbers['p99_ms'])} ms cpu {cpu_text} us/reg; options: {numbers['options_per_s']}/s"
    )


def step_line(step: StepResult) -> str:
    probe = step.probe.summary()
    cpu = step.cpu_us_per_op()
    verdict = "holds" if step.holds else "FAILS: " + "; ".join(step.reasons)
    webhook = f"webhook_delay_ms={step.webhook_delay_ms}  " if step.kind == "register" else ""
    record = f" record_missing={step.record_missing}" if step.record_missing is not None else ""
    return (
        f"[bench] {step.kind:8} {step.rate_per_s:6}/s  {webhook}sipp {step.sipp.successful}/{step.sipp.calls} ok "
        f"({step.sipp.achieved_per_s:.0f}/s) retransmissions={step.retransmissions}  probe p50 "
        f"{probe['p50_ms']} p99 {probe['p99_ms']} ms{record}  cpu us/op service {cpu['service']} redis "
        f"{cpu['redis']} webhook {cpu['webhook']} all {cpu['system']}  redis calls/op "
        f"{step.redis_calls_per_op().get('all')}  udp drops at the service "
        f"{step.udp_errors.get('service_socket_drops', '?')} (machine {step.udp_errors.get('RcvbufErrors', 0)})"
        f"  rss {step.service_rss_mb} MiB  {verdict}"
    )


def write_results(results_dir: Path, document: dict[str, object], *, suffix: str = "") -> Path:
    """`<results_dir>/<UTC date and time><suffix>.json`, written whole or not at all."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    path = results_dir / f"{stamp}{suffix}.json"
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    os.replace(temporary, path)
    return path
