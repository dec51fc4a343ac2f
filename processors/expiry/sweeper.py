"""The expiry processor: a RegistrationExpired for every binding that lapses without refresh.

The due-time index (`expiry-due`, kept by the registrations projection) is swept by a Lua
script that removes each due AOR, appends its RegistrationExpired and deletes its `user:<aor>`
record and `active-user` member (the inline projection of the lapse) in one atomic step, so
with any number of processes running each lapse gives exactly one event, and a process that
dies mid-sweep loses none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis

from events import StreamNames, new_event_id, user_key
from events.envelope import utc_now
from events.streams import ACTIVE_USER_KEY
from runtime.eventlog import retention_min_id
from runtime.periodic import Periodic
from runtime.redis_scripts import Script

log = logging.getLogger(__name__)

SWEEP_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[4]))
local n = 0
for i = 1, #due, 2 do
  local aor, score = due[i], due[i + 1]
  redis.call('ZREM', KEYS[1], aor)
  local granted = redis.call('HGET', KEYS[2], aor)
  if granted then
    n = n + 1
    local eid = ARGV[5 + n]
    local data = '{"event_id":' .. cjson.encode(eid) .. ',"occurred_at":' .. cjson.encode(ARGV[2])
      .. ',"correlation_id":' .. cjson.encode(eid) .. ',"causation_id":' .. cjson.encode(granted)
      .. ',"aor":' .. cjson.encode(aor) .. ',"expiry_time_ms":' .. string.format('%d', tonumber(score))
      .. ',"granted_event_id":' .. cjson.encode(granted) .. '}'
    redis.call('XADD', KEYS[3], 'MINID', '~', ARGV[3], '*', 'type', 'RegistrationExpired', 'v', '1',
      'data', data)
    -- the inline projection of the lapse: the record and its active-user member go with the event
    local user = ARGV[5] .. aor
    redis.call('HDEL', KEYS[2], aor)
    redis.call('DEL', user)
    redis.call('ZREM', KEYS[4], user)
  end
end
return {n, #due / 2}
"""

SWEEP_SCRIPT = Script("expiry-sweep", SWEEP_LUA)


class ExpirySweeper(Periodic):
    """A Worker that sweeps the due index every `interval_s`."""

    name = "expiry"

    def __init__(
        self,
        redis: Redis,
        names: StreamNames,
        retention_s: int,
        *,
        interval_s: float = 1.0,
        batch: int = 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(interval_s)
        self.redis = redis
        self.names = names
        self.retention_s = retention_s
        self.batch = batch
        self.clock = clock
        self.expired = 0

    async def step(self) -> int:
        return await self.sweep()

    async def sweep(self) -> int:
        """One pass; returns how many RegistrationExpired events it appended."""
        total = 0
        while True:
            now_ms = int(self.clock() * 1000)
            min_id = retention_min_id(self.retention_s, now_ms)
            ids = [new_event_id() for _ in range(self.batch)]
            now_iso = utc_now().isoformat().replace("+00:00", "Z")
            keys = (self.names.expiry_due, self.names.registration_versions, self.names.registrations, ACTIVE_USER_KEY)
            args: tuple[str | int, ...] = (now_ms, now_iso, min_id, self.batch, user_key(""), *ids)
            result = await SWEEP_SCRIPT.run(self.redis, keys, args)
            appended, scanned = (int(x) for x in result)  # type: ignore[attr-defined]
            total += appended
            if scanned < self.batch:
                break
        if total:
            self.expired += total
            log.info("bindings expired count=%d", total)
        return total
