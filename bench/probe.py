"""The latency probe: a small asyncio UDP client beside the load, timing whole transactions.

sipp's response-time clock has a coarse resolution at these rates, so the latency of a full
registration (REGISTER → 401 → digest computed → REGISTER → 200) is measured here with
`perf_counter`, at a low fixed rate, each time for a fresh user (a repeated user from the same
source would be answered from the registration cache, without the webhook). The OPTIONS probe
times OPTIONS → 200 the same way; the heartbeat probe is a feature server checking in (an OPTIONS
with `X-FS-Status: open`, always from the same source address, which is its member in
`active-fs`). A probe does not retransmit: a lost or late answer counts as a failure, with its
reason. Every transaction also counts the status of its last answer (`timeout` when none came).

Given a `RecordCheck`, the registration probe reads the jambonz record of its user the instant
its 200 OK arrives (after the clock stopped) and counts the registrations that found it missing.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

from bench.digest import PROBE_FIRST_USER, REALM, user_name
from bench.digest import authorization as digest_authorization
from bench.records import RecordCheck, RecordTally

ANSWER_TIMEOUT_S = 5.0
REGISTER_EXPIRES_S = 3600
KINDS = ("register", "options", "heartbeat")
HEARTBEAT_HEADERS = ("X-FS-Status: open", "X-FS-Calls: 0")


@dataclass(frozen=True, slots=True)
class SipAnswer:
    status: int
    headers: dict[str, str]


def parse_answer(data: bytes) -> tuple[str, SipAnswer] | None:
    """(Call-ID + CSeq number, answer) of a SIP response; None for anything else."""
    head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or parts[0] != "SIP/2.0" or not parts[1].isdigit():
        return None
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        headers.setdefault({"i": "call-id"}.get(name, name), value.strip())
    cseq = headers.get("cseq", "").split(" ", 1)[0]
    return f"{headers.get('call-id', '')} {cseq}", SipAnswer(int(parts[1]), headers)


class _Transport(asyncio.DatagramProtocol):
    """One UDP socket; answers go to the future waiting for their Call-ID and CSeq."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[SipAnswer]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass of it

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        parsed = parse_answer(data)
        if parsed is None or parsed[1].status < 200:
            return
        future = self.waiting.pop(parsed[0], None)
        if future is not None and not future.done():
            future.set_result(parsed[1])

    async def exchange(self, key: str, message: bytes, target: tuple[str, int], timeout_s: float) -> SipAnswer:
        future = asyncio.get_running_loop().create_future()
        self.waiting[key] = future
        assert self.transport is not None
        self.transport.sendto(message, target)
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        finally:
            self.waiting.pop(key, None)


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def percentiles(ordered: list[float]) -> dict[str, float | None]:
    """p50, p90, p99 and max of an ascending list of milliseconds, rounded to the microsecond."""
    return {
        name: None if value is None else round(value, 3)
        for name, value in (
            ("p50_ms", percentile(ordered, 0.50)),
            ("p90_ms", percentile(ordered, 0.90)),
            ("p99_ms", percentile(ordered, 0.99)),
            ("max_ms", ordered[-1] if ordered else None),
        )
    }


@dataclass
class ProbeResult:
    latencies_ms: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)  # of each transaction's last answer
    answered_ms: list[float] = field(default_factory=list)  # time to the last answer, whatever its status
    records: RecordTally | None = None  # registrations with a RecordCheck

    @property
    def attempts(self) -> int:
        return len(self.latencies_ms) + sum(self.failures.values())

    def summary(self) -> dict[str, object]:
        ordered = sorted(self.latencies_ms)
        document: dict[str, object] = {
            "ok": len(ordered),
            "failed": sum(self.failures.values()),
            "failures": dict(self.failures),
            **percentiles(ordered),
            "statuses": dict(self.statuses),
            # every transaction that got an answer, 200 or not: how long a failing one waited
            "answered": {"count": len(self.answered_ms), **percentiles(sorted(self.answered_ms))},
        }
        if self.records is not None:
            document["record_check"] = self.records.summary()
        return document


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a transaction ended: the status of its last answer, why it failed (None: it did not), and
    when the answer that ends it came (perf_counter)."""

    status: int
    failure: str | None
    answered_at: float


class Probe:
    """Times registrations (kind "register"), OPTIONS ("options") or feature-server heartbeats
    ("heartbeat") against one UDP target."""

    def __init__(
        self,
        target_port: int,
        *,
        kind: str = "register",
        password: str = "",
        users: Iterator[int] | None = None,
        realm: str = REALM,
        records: RecordCheck | None = None,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
        target_host: str = "127.0.0.1",
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"probe kind is one of {', '.join(KINDS)}, not {kind!r}")
        self.kind = kind
        self.target = (target_host, target_port)
        self.password = password
        self.realm = realm
        self.records = records if kind == "register" else None
        self.answer_timeout_s = answer_timeout_s
        self._users = users if users is not None else itertools.count(PROBE_FIRST_USER)
        self._protocol = _Transport()
        self._local_port = 0
        self._calls = itertools.count(1)
        self._tag = os.urandom(4).hex()

    async def __aenter__(self) -> Probe:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self._protocol, local_addr=("127.0.0.1", 0))
        self._local_port = transport.get_extra_info("sockname")[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.close()

    async def run(self, rate_per_s: float, stop: asyncio.Event) -> ProbeResult:
        """Starts one transaction every 1/rate seconds until `stop` is set; waits for the last."""
        result = ProbeResult(records=RecordTally() if self.records is not None else None)
        interval_s = 1.0 / rate_per_s
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        async with asyncio.TaskGroup() as group:
            while not stop.is_set():
                group.create_task(self._timed(result))
                next_at += interval_s
                try:
                    async with asyncio.timeout(max(0.0, next_at - loop.time())):
                        await stop.wait()
                except TimeoutError:
                    pass
        return result

    async def _timed(self, result: ProbeResult) -> None:
        started = time.perf_counter()
        user = user_name(next(self._users)) if self.kind == "register" else ""
        try:
            outcome = await (self._register(user) if self.kind == "register" else self._options())
        except TimeoutError:
            result.failures["timeout"] += 1
            result.statuses["timeout"] += 1
            return
        result.statuses[str(outcome.status)] += 1
        result.answered_ms.append((outcome.answered_at - started) * 1000)
        if outcome.failure is not None:
            result.failures[outcome.failure] += 1
            return
        result.latencies_ms.append((outcome.answered_at - started) * 1000)
        if self.records is not None and result.records is not None:
            await self.records.check(f"{user}@{self.realm}", result.records)

    def _headers(self, method: str, call_id: str, cseq: int, from_user: str) -> list[str]:
        return [
            f"Via: SIP/2.0/UDP 127.0.0.1:{self._local_port};branch=z9hG4bK{os.urandom(6).hex()};rport",
            "Max-Forwards: 70",
            f"From: <sip:{from_user}@{self.realm}>;tag={call_id}",
            f"To: <sip:{from_user}@{self.realm}>",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
        ]

    async def _exchange(self, key: str, message: bytes) -> SipAnswer:
        return await self._protocol.exchange(key, message, self.target, self.answer_timeout_s)

    async def _options(self) -> Outcome:
        call_id = f"probe-{self._tag}-{next(self._calls)}"
        request_line = f"OPTIONS sip:{self.target[0]}:{self.target[1]} SIP/2.0"
        extra = HEARTBEAT_HEADERS if self.kind == "heartbeat" else ()
        lines = [request_line, *self._headers("OPTIONS", call_id, 1, "probe"), *extra, "Content-Length: 0", "", ""]
        answer = await self._exchange(f"{call_id} 1", "\r\n".join(lines).encode())
        answered_at = time.perf_counter()
        return Outcome(answer.status, None if answer.status == 200 else f"status {answer.status}", answered_at)

    async def _register(self, user: str) -> Outcome:
        call_id = f"probe-{self._tag}-{next(self._calls)}"
        uri = f"sip:{self.realm}"
        first = await self._exchange(f"{call_id} 1", self._register_message(user, call_id, 1))
        if first.status != 401 or "www-authenticate" not in first.headers:
            return Outcome(first.status, f"first answer {first.status}", time.perf_counter())
        authorization = "Authorization: " + digest_authorization(
            first.headers["www-authenticate"], username=user, password=self.password, uri=uri
        )
        second = await self._exchange(f"{call_id} 2", self._register_message(user, call_id, 2, authorization))
        answered_at = time.perf_counter()
        return Outcome(second.status, None if second.status == 200 else f"second answer {second.status}", answered_at)

    def _register_message(self, user: str, call_id: str, cseq: int, authorization: str | None = None) -> bytes:
        lines = [
            f"REGISTER sip:{self.realm} SIP/2.0",
            *self._headers("REGISTER", call_id, cseq, user),
            f"Contact: <sip:{user}@127.0.0.1:{self._local_port};transport=udp>;expires={REGISTER_EXPIRES_S}",
            f"Expires: {REGISTER_EXPIRES_S}",
            "User-Agent: sbc-bench-probe",
        ]
        if authorization:
            lines.append(authorization)
        lines += ["Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode()
