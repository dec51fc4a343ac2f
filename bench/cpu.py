"""CPU seconds from /proc: utime + stime of named processes (all their threads), and the machine's;
UDP drop counters (the machine's, and one socket's).

A `CpuMeter` knows which pids belong to which part (service processes, redis-server, the
webhook, sipp) and takes snapshots; the difference of two snapshots is the CPU each part spent
over a step. Clock ticks are 10 ms, so a step should burn well over a second to be read well.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of a live process, in seconds; None when it is gone or not visible."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    fields = text[text.rindex(b")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS_PER_S


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot, from the first line of /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy / CLOCK_TICKS_PER_S, (busy + idle + iowait) / CLOCK_TICKS_PER_S


@dataclass(frozen=True)
class CpuSnapshot:
    by_part_s: Mapping[str, float]
    machine_busy_s: float
    machine_total_s: float


@dataclass
class CpuMeter:
    """Parts by name, each a list of pids (a part may be several processes)."""

    parts: dict[str, list[int]] = field(default_factory=dict)

    def add(self, part: str, pid: int) -> None:
        self.parts.setdefault(part, []).append(pid)

    def snapshot(self) -> CpuSnapshot:
        by_part = {}
        for part, pids in self.parts.items():
            readings = [process_cpu_s(pid) for pid in pids]
            by_part[part] = sum(r for r in readings if r is not None)
        busy, total = machine_cpu_s()
        return CpuSnapshot(by_part, busy, total)


@dataclass(frozen=True)
class CpuSpent:
    """CPU seconds spent between two snapshots, by part and by the whole machine."""

    by_part_s: dict[str, float]
    machine_busy_s: float
    machine_total_s: float

    @classmethod
    def between(cls, before: CpuSnapshot, after: CpuSnapshot) -> CpuSpent:
        parts = {name: round(after.by_part_s[name] - before.by_part_s.get(name, 0.0), 3) for name in after.by_part_s}
        return cls(
            parts,
            round(after.machine_busy_s - before.machine_busy_s, 3),
            round(after.machine_total_s - before.machine_total_s, 3),
        )

    def total_s(self, parts: tuple[str, ...]) -> float:
        return sum(self.by_part_s.get(name, 0.0) for name in parts)


def udp_errors() -> dict[str, int]:
    """The machine's UDP drop counters (/proc/net/snmp): a full socket buffer shows in RcvbufErrors."""
    try:
        with open("/proc/net/snmp") as snmp:
            rows = [line.split() for line in snmp if line.startswith("Udp:")]
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    counters = dict(zip(rows[0][1:], (int(v) for v in rows[1][1:]), strict=False))
    return {name: counters[name] for name in ("InErrors", "RcvbufErrors", "SndbufErrors") if name in counters}


def udp_socket_drops(port: int) -> int | None:
    """Datagrams dropped by the UDP socket bound to 127.0.0.1:<port> (last column of /proc/net/udp)."""
    wanted = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/udp") as table:
            for line in table:
                fields = line.split()
                if len(fields) > 12 and fields[1] == wanted:
                    return int(fields[-1])
    except OSError:
        return None
    return None


def calibrate(rounds: int = 5) -> dict[str, float]:
    """Milliseconds a fixed pure-Python workload takes here (best of `rounds`), the same on every run.

    The bench machine's speed varies from day to day (a shared host): compare this number between two
    result files before comparing their rates.
    """
    import json
    import time

    document = {"user": "u000001", "realm": "bench.local", "headers": {f"h{i}": "x" * 40 for i in range(20)}}
    best: dict[str, float] = {}
    for _ in range(rounds):
        started = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i * i
        loop_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        for _ in range(2_000):
            json.loads(json.dumps(document))
        json_ms = (time.perf_counter() - started) * 1000
        best["loop_ms"] = min(best.get("loop_ms", loop_ms), loop_ms)
        best["json_ms"] = min(best.get("json_ms", json_ms), json_ms)
    return {name: round(value, 2) for name, value in best.items()}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown"
