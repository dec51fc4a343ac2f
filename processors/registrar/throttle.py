"""Brute-force throttling of the registrar: failed authentications per source IP and per AOR lead to a block.

Pure: what the shell read from Redis comes in as a `ThrottleState`, what must change goes out as Redis
commands committed with the decision (`Outcome.writes`). Every SBC of the cluster shares the keys, so a
block started by one is honoured by all.

What counts as a failure: a REGISTER whose credentials were judged and refused, i.e. a `403 Invalid
credentials` (or the webhook's `blacklist` 403) from the webhook's `{"status": "fail"}` or from the
`clients` table (no such client, inactive, no password, digest mismatch). Challenges, stale nonces,
malformed Authorization headers, unknown realms and webhook faults (timeouts, HTTP errors, which say
nothing about the phone's password) do not count.

Counting: a counter per subject (`ip`, `aor`) that lives `window_s` from its first failure (`SET NX EX` then
`INCR`). The failure that brings it to its limit starts a block of that subject: `block_s`, doubled for each
block the subject had within `strike_memory_s` (its strikes), at most `block_max_s`. The block's start is one
`BlockStarted` fact; a blocked request is answered `403 X-Reason: Too many failed authentications` without a
webhook call, a MySQL lookup or a fact. A successful authentication clears the AOR's counter and strikes and
the source IP's counter (not its strikes).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from events import BlockStarted
from events.streams import StreamNames
from runtime.handling import RedisCommand

if TYPE_CHECKING:
    from processors.registrar.decide import Decision
    from runtime.settings import Settings

log = logging.getLogger(__name__)

REASON_BLOCKED = "Too many failed authentications"
STRIKE_MEMORY_S = 24 * 3600


class Subject(enum.Enum):
    """What a failure is counted against, and what a block shuts out."""

    IP = "ip"
    AOR = "aor"


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """The limits (SIDECAR_AUTH_*) and the key names of one cluster."""

    names: StreamNames = StreamNames()
    failures_per_aor: int = 10
    failures_per_ip: int = 30
    window_s: int = 60
    block_s: int = 300
    block_max_s: int = 86_400
    strike_memory_s: int = STRIKE_MEMORY_S

    def limit(self, subject: Subject) -> int:
        return self.failures_per_aor if subject is Subject.AOR else self.failures_per_ip

    def block_duration_s(self, strike: int) -> int:
        """How long the `strike`-th block in a row lasts: `block_s` doubled per earlier strike, capped."""
        if strike <= 1:
            return min(self.block_s, self.block_max_s)
        return min(self.block_s << min(strike - 1, 40), self.block_max_s)

    def failures_key(self, subject: Subject, value: str) -> str:
        return self.names.auth_failures(subject.value, value)

    def block_key(self, subject: Subject, value: str) -> str:
        return self.names.auth_block(subject.value, value)

    def strikes_key(self, subject: Subject, value: str) -> str:
        return self.names.auth_strikes(subject.value, value)

    def keys(self, source_ip: str, aor: str) -> tuple[str, ...]:
        """The keys `ThrottleState.of` reads for one request, in its order."""
        return tuple(
            make(subject, value)
            for subject, value in ((Subject.IP, source_ip), (Subject.AOR, aor))
            for make in (self.failures_key, self.strikes_key, self.block_key)
        )


def throttle_policy(settings: Settings, names: StreamNames) -> ThrottlePolicy | None:
    """The policy of the SIDECAR_AUTH_* settings; None when throttling is off."""
    limits = settings.auth_throttle
    if not limits.enabled:
        return None
    return ThrottlePolicy(
        names=names,
        failures_per_aor=limits.failures_per_aor,
        failures_per_ip=limits.failures_per_ip,
        window_s=limits.window_s,
        block_s=limits.block_s,
        block_max_s=limits.block_max_s,
    )


class BlockRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The value of a block key: what `sbc-sidecar blocks` shows."""

    until_ms: int
    started_ms: int
    strike: int
    failures: int


_block_decoder = msgspec.json.Decoder(BlockRecord)
_block_encoder = msgspec.json.Encoder()


def parse_block(raw: bytes | str | None) -> BlockRecord | None:
    """A block key's value; None when absent. An unreadable value is a block of unknown end (kept, not lifted)."""
    if raw is None:
        return None
    try:
        return _block_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return BlockRecord(until_ms=0, started_ms=0, strike=1, failures=0)


@dataclass(frozen=True, slots=True)
class SubjectState:
    """One subject's counter, strikes and block as read."""

    failures: int = 0
    strikes: int = 0
    block: BlockRecord | None = None


@dataclass(frozen=True, slots=True)
class ThrottleState:
    """What the shell read for one request: the state of its source IP and of its AOR."""

    ip: SubjectState = SubjectState()
    aor: SubjectState = SubjectState()

    @classmethod
    def of(cls, values: Sequence[bytes | str | None]) -> ThrottleState:
        """From the values of `ThrottlePolicy.keys`, in that order."""
        ip_failures, ip_strikes, ip_block, aor_failures, aor_strikes, aor_block = values
        return cls(
            ip=SubjectState(_count(ip_failures), _count(ip_strikes), parse_block(ip_block)),
            aor=SubjectState(_count(aor_failures), _count(aor_strikes), parse_block(aor_block)),
        )

    def of_subject(self, subject: Subject) -> SubjectState:
        return self.aor if subject is Subject.AOR else self.ip

    def blocked(self) -> tuple[Subject, BlockRecord] | None:
        """The block in force for this request, the AOR's first; None when neither is blocked."""
        for subject in (Subject.AOR, Subject.IP):
            block = self.of_subject(subject).block
            if block is not None:
                return subject, block
        return None


def _count(raw: bytes | str | None) -> int:
    if raw is None:
        return 0
    try:
        return max(0, int(raw))
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True)
class BlockStart:
    """A block the failure being decided starts."""

    subject: Subject
    value: str
    failures: int
    strike: int
    duration_s: int
    until_ms: int


@dataclass(frozen=True, slots=True)
class FailureCounted:
    """What one failed authentication does: the blocks it starts and the Redis commands that record it."""

    blocks: tuple[BlockStart, ...]
    writes: tuple[RedisCommand, ...]


def count_failure(
    policy: ThrottlePolicy, state: ThrottleState, source_ip: str, aor: str, now_ms: int
) -> FailureCounted:
    """Counts a failed authentication against the source IP and the AOR; starts the blocks it brings about."""
    blocks: list[BlockStart] = []
    writes: list[RedisCommand] = []
    for subject, value in ((Subject.AOR, aor), (Subject.IP, source_ip)):
        known = state.of_subject(subject)
        failures = known.failures + 1
        counter = policy.failures_key(subject, value)
        if failures < policy.limit(subject) or known.block is not None:
            writes += [("SET", counter, 0, "EX", policy.window_s, "NX"), ("INCR", counter)]
            continue
        strike = known.strikes + 1
        duration_s = policy.block_duration_s(strike)
        start = BlockStart(subject, value, failures, strike, duration_s, now_ms + duration_s * 1000)
        blocks.append(start)
        record = BlockRecord(until_ms=start.until_ms, started_ms=now_ms, strike=strike, failures=failures)
        strikes = policy.strikes_key(subject, value)
        writes += [
            ("SET", policy.block_key(subject, value), _block_encoder.encode(record), "PX", duration_s * 1000),
            ("DEL", counter),  # counting starts afresh once the block ends
            ("INCR", strikes),
            ("EXPIRE", strikes, max(policy.strike_memory_s, duration_s)),
        ]
    return FailureCounted(tuple(blocks), tuple(writes))


def success_writes(policy: ThrottlePolicy, state: ThrottleState, source_ip: str, aor: str) -> tuple[RedisCommand, ...]:
    """A successful authentication forgets the AOR's failures and strikes and the source IP's failures.

    Nothing is written when there is nothing to forget (the usual case).
    """
    keys: Iterable[tuple[bool, str]] = (
        (state.aor.failures > 0, policy.failures_key(Subject.AOR, aor)),
        (state.aor.strikes > 0, policy.strikes_key(Subject.AOR, aor)),
        (state.ip.failures > 0, policy.failures_key(Subject.IP, source_ip)),
    )
    stale = [key for present, key in keys if present]
    return (("DEL", *stale),) if stale else ()


class ThrottleStats:
    """The registrar's throttling counters for /metrics, and one log line per block started."""

    __slots__ = ("blocks_started", "blocked_requests")

    def __init__(self) -> None:
        self.blocks_started = 0
        self.blocked_requests = 0

    def count(self, decision: Decision) -> None:
        if decision.throttled:
            self.blocked_requests += 1
            return
        for fact in decision.facts:
            if isinstance(fact, BlockStarted):
                self.blocks_started += 1
                log.warning(
                    "authentication block started kind=%s subject=%s failures=%d window_s=%d block_s=%d strike=%d",
                    fact.subject_kind,
                    fact.subject,
                    fact.failures,
                    fact.window_s,
                    fact.block_s,
                    fact.strike,
                )

    def metrics(self) -> dict[str, float]:
        return {"auth_blocks_started": self.blocks_started, "auth_blocked_requests": self.blocked_requests}
