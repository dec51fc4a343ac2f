"""The blocks of brute-force throttling as an operator sees them: `sbc-sidecar blocks` and `blocks clear`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import redis.asyncio as aioredis

from events.streams import StreamNames
from processors.registrar.throttle import Subject, ThrottlePolicy, parse_block


@dataclass(frozen=True, slots=True)
class BlockInForce:
    """One block key: what is blocked, until when, and why."""

    kind: str  # "ip" or "aor"
    subject: str
    remaining_ms: int
    until_ms: int
    started_ms: int
    strike: int
    failures: int

    def describe(self) -> str:
        return (
            f"{self.kind:<3}  {self.subject}  {self.remaining_ms / 1000:.0f} s left  "
            f"(block {self.strike} in a row, {self.failures} failed authentications)"
        )


def subject_of(text: str) -> tuple[Subject, str]:
    """An IP address is a source; anything else is an AOR (`user@host`, as `history` takes it)."""
    try:
        return Subject.IP, str(ipaddress.ip_address(text.strip()))
    except ValueError:
        from runtime.inspect import parse_aor

        return Subject.AOR, parse_aor(text)


async def list_blocks(redis: aioredis.Redis, names: StreamNames) -> list[BlockInForce]:
    """Every block in force, the longest-lasting first."""
    prefix_len = len(names.auth_block("", ""))  # "<prefix>:auth-block::"
    found: list[BlockInForce] = []
    async for key in redis.scan_iter(match=names.auth_block_pattern, count=500):
        name = key.decode() if isinstance(key, bytes) else str(key)
        kind, _, subject = name[prefix_len - 1 :].partition(":")
        raw, remaining_ms = await redis.get(key), await redis.pttl(key)
        record = parse_block(raw)
        if record is None or remaining_ms < 0:
            continue  # lifted or lapsed meanwhile
        found.append(
            BlockInForce(
                kind, subject, remaining_ms, record.until_ms, record.started_ms, record.strike, record.failures
            )
        )
    return sorted(found, key=lambda block: -block.remaining_ms)


async def clear_block(redis: aioredis.Redis, names: StreamNames, text: str) -> tuple[Subject, str, bool]:
    """Lifts the block of an IP or AOR and forgets its failures and strikes; whether a block was in force."""
    subject, value = subject_of(text)
    policy = ThrottlePolicy(names=names)
    lifted = await redis.delete(policy.block_key(subject, value))
    await redis.delete(policy.failures_key(subject, value), policy.strikes_key(subject, value))
    return subject, value, bool(lifted)
