"""bench/run --smoke: the benchmark works end to end at one tiny rate (the ladder itself is no CI test),
with a webhook that takes WEBHOOK_DELAY_MS to answer, as a customer's does."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import SIPP

REPO = Path(__file__).resolve().parents[2]
LAST_LINE = re.compile(r"registrations: \d+/s p50 \d+\.\d ms p99 \d+\.\d ms cpu \d+ us/reg; options: \d+/s")
WEBHOOK_DELAY_MS = 50


@pytest.mark.sipp
@pytest.mark.timeout(150)
def test_bench_smoke_runs_end_to_end(tmp_path: Path) -> None:
    if SIPP is None:
        pytest.fail("sipp is not installed (Debian package sip-tester); .ci/run installs it")
    argv = [str(REPO / "bench" / "run"), "--smoke", "--webhook-delay-ms", str(WEBHOOK_DELAY_MS)]
    result = subprocess.run([*argv, "--results-dir", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=110, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines and LAST_LINE.fullmatch(lines[-1]), result.stdout + result.stderr
    assert lines[-1].startswith("registrations: 20/s ") and lines[-1].endswith("options: 200/s")
    [report] = tmp_path.glob("*-smoke.json")
    document = json.loads(report.read_text())
    assert document["line"] == lines[-1]
    [register] = document["register"]
    assert register["holds"] and register["sipp"]["successful"] == 60
    assert register["webhook"] == {"ok": register["sipp"]["successful"] + register["probe"]["ok"]}
    # the delay is the webhook's, so every full registration takes at least that long
    assert document["config"]["webhook_delay_ms"] == register["webhook_delay_ms"] == WEBHOOK_DELAY_MS
    assert register["probe"]["p50_ms"] >= WEBHOOK_DELAY_MS
    assert register["retransmissions"] == register["sipp"]["retransmissions"] == 0
    # every probe registration's record was read after its 200; how many found it missing is counted
    record_check = register["probe"]["record_check"]
    assert record_check["checked"] == register["probe"]["ok"]
    assert 0 <= register["record_missing"] == record_check["missing"] <= record_check["checked"]
    step_line = f"webhook_delay_ms={WEBHOOK_DELAY_MS}  sipp 60/60 ok"
    assert step_line in result.stderr and f"record_missing={register['record_missing']}" in result.stderr
    assert document["options"][0]["holds"]


SOAK_LINE = re.compile(
    r"soak: 60 phones, 2 rounds: redis -?\d+ bytes/phone \(round 1: -?\d+\), -?\d+\.\d bytes retained per refresh"
)


@pytest.mark.timeout(150)
def test_bench_soak_runs_end_to_end(tmp_path: Path) -> None:
    """bench/run --soak, tiny: 60 phones register, refresh twice from their own sockets (answered from the
    cache), 5 % of them (3) move to a new port in each round and register in full again."""
    argv = [str(REPO / "bench" / "run"), "--soak", "--phones", "60", "--rounds", "2", "--change-every", "1"]
    result = subprocess.run([*argv, "--results-dir", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines and SOAK_LINE.fullmatch(lines[-1]), result.stdout + result.stderr
    [report] = tmp_path.glob("*-soak.json")
    document = json.loads(report.read_text())
    assert document["line"] == lines[-1]
    register, *refreshes = document["rounds"]
    assert [r["round"] for r in document["rounds"]] == ["register", "refresh 1", "refresh 2"]
    assert register["phones"]["full"] == 60 and register["phones"]["failed"] == 0
    for refresh in refreshes:
        # the phones that stayed are answered from their cached binding; the moved ones are challenged again
        assert refresh["phones"]["cached"] == 57 and refresh["phones"]["full"] == 0
        assert refresh["moved"]["full"] == 3 and refresh["moved"]["failed"] == 0
        assert refresh["drain"]["drained"]
    soak = document["soak"]
    assert soak["refreshes_sent"] == 120 and soak["failed"] == 0
    assert register["footprint"]["records"]["keys"] == 60
    assert refreshes[-1]["footprint"]["active_user"]["run_members"] == 60
    assert soak["bytes_per_phone_after_register"]["keys_bytes"] > 0
    assert soak["archive_rows_written"]["after_last"] >= 0


@pytest.mark.sipp
@pytest.mark.timeout(150)
def test_bench_smoke_on_a_redis_cluster(tmp_path: Path) -> None:
    """bench/run --smoke --redis-cluster: the same steps against a Redis Cluster of three masters started for the run
    (the service on three partitions); every probe's record found at its 200, and Redis's CPU is the three masters'."""
    if SIPP is None:
        pytest.fail("sipp is not installed (Debian package sip-tester); .ci/run installs it")
    argv = [str(REPO / "bench" / "run"), "--smoke", "--redis-cluster", "--results-dir", str(tmp_path)]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=110, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert LAST_LINE.fullmatch(result.stdout.strip().splitlines()[-1]), result.stdout + result.stderr
    [report] = tmp_path.glob("*-smoke.json")
    document = json.loads(report.read_text())
    assert document["redis_cluster"] is True
    [register] = document["register"]
    assert register["holds"] and register["sipp"]["successful"] == 60
    assert register["record_missing"] == 0  # the record is on its own master, written before the answer left
    assert register["cpu_us_per_op"]["redis"] > 0
