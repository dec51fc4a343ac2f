"""sipp runs of the ladder: the two scenarios, the users file, one bounded run, its statistics.

Each registration is a distinct user: the users file (-inf, SEQUENTIAL) holds exactly the calls of
one run, `[field0]` is the user. sipp's `-au` value is itself a message template, so `-au
[field0]` makes the digest username follow the users file; the password (-ap) is shared.
A run is bounded: `-m` calls at `-r` per second, `-l` calls in flight, and a global `-timeout`.
"""

from __future__ import annotations

import asyncio
import csv
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from bench.digest import REALM, user_name
from bench.processes import ProcessGroup

REGISTER_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!-- One full registration: REGISTER, 401, REGISTER with the digest, 200 (in the realm formatted in). -->
<scenario name="bench register">
  <send retrans="500">
    <![CDATA[
      REGISTER sip:{realm} SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:[field0]@{realm}>;tag=[call_number]
      To: <sip:[field0]@{realm}>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:[field0]@[local_ip]:[local_port];transport=[transport]>;expires=[expires]
      Max-Forwards: 70
      User-Agent: sbc-bench
      Expires: [expires]
      Content-Length: 0

    ]]>
  </send>
  <recv response="401" auth="true" timeout="5000"/>
  <send retrans="500">
    <![CDATA[
      REGISTER sip:{realm} SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:[field0]@{realm}>;tag=[call_number]
      To: <sip:[field0]@{realm}>
      Call-ID: [call_id]
      CSeq: 2 REGISTER
      Contact: <sip:[field0]@[local_ip]:[local_port];transport=[transport]>;expires=[expires]
      [authentication]
      Max-Forwards: 70
      User-Agent: sbc-bench
      Expires: [expires]
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" timeout="5000"/>
</scenario>
"""

OPTIONS_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!-- A plain OPTIONS keep-alive, answered 200 by ingest at once. -->
<scenario name="bench options">
  <send retrans="500">
    <![CDATA[
      OPTIONS sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:ping@[local_ip]:[local_port]>;tag=[call_number]
      To: <sip:[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 OPTIONS
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" timeout="5000"/>
</scenario>
"""

MAX_RUN_S = 30
UDP_BUFFER_BYTES = 4 * 1024 * 1024
# Counters read from sipp's statistics file (-trace_stat), cumulative columns.
FAILURE_COLUMNS = (
    "FailedCannotSendMessage",
    "FailedMaxUDPRetrans",
    "FailedTcpConnect",
    "FailedTcpClosed",
    "FailedUnexpectedMessage",
    "FailedCallRejected",
    "FailedCmdNotSent",
    "FailedRegexpDoesntMatch",
    "FailedRegexpShouldntMatch",
    "FailedRegexpHdrNotFound",
    "FailedOutboundCongestion",
    "FailedTimeoutOnRecv",
    "FailedTimeoutOnSend",
)


def sipp_binary() -> str:
    path = shutil.which("sipp")
    if path is None:
        raise RuntimeError("sipp is not installed (Debian package sip-tester; scripts/services.sh installs it)")
    return path


@dataclass(frozen=True)
class SippRun:
    """What one sipp run did, from its exit status, its wall clock and its final statistics."""

    kind: str
    rate_per_s: int
    calls: int
    returncode: int | None
    wall_s: float
    created: int
    successful: int
    failed: int
    retransmissions: int
    failures: dict[str, int]

    @property
    def achieved_per_s(self) -> float:
        return self.successful / self.wall_s if self.wall_s else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "rate_per_s": self.rate_per_s,
            "calls": self.calls,
            "returncode": self.returncode,
            "wall_s": round(self.wall_s, 3),
            "created": self.created,
            "successful": self.successful,
            "failed": self.failed,
            "retransmissions": self.retransmissions,
            "achieved_per_s": round(self.achieved_per_s, 1),
            "failures": self.failures,
        }


class Sipp:
    """Writes the scenarios once into `work_dir` and runs one bounded step at a time."""

    def __init__(
        self,
        work_dir: Path,
        processes: ProcessGroup,
        *,
        target_port: int,
        password: str,
        local_port: int,
        realm: str = REALM,
    ) -> None:
        self.work_dir = work_dir
        self.processes = processes
        self.target_port = target_port
        self.password = password
        self.local_port = local_port
        self.realm = realm
        self.binary = sipp_binary()
        self.scenarios = {"register": work_dir / f"register-{realm}.xml", "options": work_dir / "options.xml"}
        self.scenarios["register"].write_text(REGISTER_SCENARIO.format(realm=realm))
        self.scenarios["options"].write_text(OPTIONS_SCENARIO)
        self._runs = 0

    def write_users(self, path: Path, first_user: int, count: int) -> None:
        with path.open("w") as out:
            out.write("SEQUENTIAL\n")
            out.writelines(f"{user_name(first_user + i)};\n" for i in range(count))

    def argv(
        self, kind: str, rate_per_s: int, calls: int, timeout_s: int, stat_path: Path, users_path: Path | None
    ) -> list[str]:
        argv = [
            self.binary,
            f"127.0.0.1:{self.target_port}",
            "-sf",
            str(self.scenarios[kind]),
            "-t",
            "u1",
            "-i",
            "127.0.0.1",
            "-p",
            str(self.local_port),
            "-m",
            str(calls),
            "-r",
            str(rate_per_s),
            "-rp",
            "1000",
            "-l",
            str(max(50, rate_per_s * 2)),
            "-nostdin",
            "-timeout",
            f"{timeout_s}s",
            "-timeout_error",
            "-buff_size",
            str(UDP_BUFFER_BYTES),
            "-trace_stat",
            "-stf",
            str(stat_path),
            "-fd",
            "1",
        ]
        if users_path is not None:
            argv += ["-inf", str(users_path), "-au", "[field0]", "-ap", self.password, "-key", "expires", "3600"]
        return argv

    async def run(self, kind: str, rate_per_s: int, duration_s: float, *, first_user: int = 0) -> SippRun:
        """One run of `rate × duration` calls, bounded by MAX_RUN_S; registrations use users from
        `first_user` on."""
        self._runs += 1
        calls = max(1, round(rate_per_s * duration_s))
        run_name = f"{self._runs}-{kind}-{rate_per_s}" + ("" if self.realm == REALM else f"-{self.realm}")
        stat_path = self.work_dir / f"stat-{run_name}.csv"
        users_path = None
        if kind == "register":
            users_path = self.work_dir / f"users-{run_name}.csv"
            self.write_users(users_path, first_user, calls)
        timeout_s = int(min(MAX_RUN_S, duration_s + 15))
        argv = self.argv(kind, rate_per_s, calls, timeout_s, stat_path, users_path)
        started = time.perf_counter()
        child = await self.processes.start(f"sipp-{run_name}", argv, cwd=self.work_dir)
        try:
            await asyncio.wait_for(child.process.wait(), timeout_s + 10)
        finally:
            await self.processes.stop(child)
        wall_s = time.perf_counter() - started
        stats = read_final_stats(stat_path)
        failures = {name: stats.get(f"{name}(C)", 0) for name in FAILURE_COLUMNS}
        return SippRun(
            kind,
            rate_per_s,
            calls,
            child.process.returncode,
            wall_s,
            created=stats.get("TotalCallCreated", 0),
            successful=stats.get("SuccessfulCall(C)", 0),
            failed=stats.get("FailedCall(C)", 0),
            retransmissions=stats.get("Retransmissions(C)", 0),
            failures={name: count for name, count in failures.items() if count},
        )


def read_final_stats(path: Path) -> dict[str, int]:
    """The integer columns of the last row of sipp's -trace_stat file (';'-separated, header first)."""
    try:
        rows = list(csv.reader(path.open(), delimiter=";"))
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    header, last = rows[0], rows[-1]
    out = {}
    for name, value in zip(header, last, strict=False):
        if value.strip().lstrip("-").isdigit():
            out[name.strip()] = int(value)
    return out
