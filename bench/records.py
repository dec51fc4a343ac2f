"""The jambonz record of a registration, read the instant its 200 OK arrives (issue 13).

sbc-inbound and the feature servers look a user up as soon as a call comes in, so a phone that
has its 200 OK must already have `user:<aor>` (a JSON value with a TTL) and its member in the
`active-user` sorted set. `RecordCheck` reads the three (GET, TTL, ZSCORE in one pipeline, no
sleep, no retry) over connections opened before the load starts, and tallies what was missing.

The key names are jambonz's (sbc-outbound and the feature server read them), written here as a
client of the service would write them, not imported from the service.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

ACTIVE_USER_KEY = "active-user"
READ_TIMEOUT_S = 2.0
# Connections opened before the load: the probe has a few registrations in flight at a time (more
# with a slow webhook); one beyond these is opened on demand, at the cost of one connect.
WARM_CONNECTIONS = 8


def record_key(aor: str) -> str:
    """`user:<user>@<realm>`, the registration record."""
    return f"user:{aor}"


@dataclass
class RecordTally:
    """How many registrations were checked, and how many found a part of their record missing."""

    checked: int = 0
    missing: int = 0  # any part missing
    missing_parts: Counter[str] = field(default_factory=Counter)  # record, ttl, active_user
    errors: int = 0  # the read itself failed (not counted as missing)

    def summary(self) -> dict[str, object]:
        return {
            "checked": self.checked,
            "missing": self.missing,
            "missing_parts": dict(self.missing_parts),
            "errors": self.errors,
        }


class RecordCheck:
    """Reads `user:<aor>` (GET, TTL) and `ZSCORE active-user user:<aor>` at once, over a client of its own."""

    def __init__(self, client: Redis) -> None:
        self.client = client

    async def __aenter__(self) -> RecordCheck:
        """Opens WARM_CONNECTIONS connections now, so that no check pays for a connect (a Redis Cluster client opens
        its connections to each master on its first command instead: one check)."""
        pool = getattr(self.client, "connection_pool", None)
        if pool is None:
            await self.client.ping()
            return self
        taken: list[AbstractConnection] = []
        try:
            async with asyncio.timeout(10):
                for _ in range(WARM_CONNECTIONS):
                    connection = await pool.get_connection()
                    taken.append(connection)
        finally:
            for connection in taken:
                await pool.release(connection)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.client.aclose()

    async def missing_parts(self, aor: str) -> list[str]:
        """The parts of the record of `aor` not there now: `record` (no value), `ttl` (none left),
        `active_user` (no score)."""
        key = record_key(aor)
        async with asyncio.timeout(READ_TIMEOUT_S):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.ttl(key)
                pipe.zscore(ACTIVE_USER_KEY, key)
                value, ttl_s, score = await pipe.execute()
        missing = []
        if value is None:
            missing.append("record")
        if ttl_s is None or ttl_s < 0:
            missing.append("ttl")
        if score is None:
            missing.append("active_user")
        return missing

    async def check(self, aor: str, tally: RecordTally) -> None:
        """One check of `aor`, counted in `tally`."""
        try:
            missing = await self.missing_parts(aor)
        except (RedisError, TimeoutError):
            tally.errors += 1
            return
        tally.checked += 1
        if missing:
            tally.missing += 1
            tally.missing_parts.update(missing)
