"""The regbot leader lock (SPEC 4.1), made safe: take with SET NX EX, renew and release only by token.

The original renewed with an unconditional `SET key mine EX 70` after a separate GET, so a peer that took the
lock in between lost it again and both believed they led. Here renewal and release compare the token inside
one Lua script, and taking sets the TTL in the same command (the original's SET NX then EXPIRE could leave a
lock without TTL behind a crash).
"""

from __future__ import annotations

import os
from typing import Literal

from redis.asyncio import Redis

from runtime.redis_scripts import Script

RENEW = Script(
    "regbot_renew",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
""",
)

RELEASE = Script(
    "regbot_release",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""",
)

Check = Literal["acquired", "kept", "lost", "none"]


class LeaderLock:
    """One process's view of the cluster's regbot lock."""

    def __init__(self, redis: Redis, key: str, ttl_s: int, token: str | None = None) -> None:
        self.redis = redis
        self.key = key
        self.ttl_s = ttl_s
        self.token = token or os.urandom(9).hex()
        self.held = False

    async def check(self) -> Check:
        """Renew the lock if held, else try to take it. `lost`: held before, not now."""
        if self.held:
            if await RENEW.run(self.redis, [self.key], [self.token, self.ttl_s]):
                return "kept"
            self.held = False
            if await self._take():
                return "acquired"  # it had lapsed (a stall longer than the TTL) and nobody took it: ours again
            return "lost"
        if await self._take():
            return "acquired"
        return "none"

    async def _take(self) -> bool:
        self.held = bool(await self.redis.set(self.key, self.token, nx=True, ex=self.ttl_s))
        return self.held

    async def release(self) -> None:
        if self.held:
            self.held = False
            await RELEASE.run(self.redis, [self.key], [self.token])
