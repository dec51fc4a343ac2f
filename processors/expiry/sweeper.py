"""The expiry processor: a RegistrationExpired for every binding that lapses without refresh.

The due-time index (`expiry-due`, kept by the registrations projection) is swept by a Lua
script that removes each due AOR, appends its RegistrationExpired and deletes its `user:<aor>`
record and `active-user` member (the inline projection of the lapse) in one atomic step, so
with any number of processes running each lapse gives exactly one event, and a process that
dies mid-sweep loses none.

On a Redis Cluster the record and `active-user` are in slots of their own: the script does the
partition's part (the index, the version, the event) and names the lapses it appended; the
record and the member are then deleted apart, each only while it is still the lapsed grant's
(a refresh granted meanwhile keeps its record). The record has a TTL of its own, so a sweeper
that dies between the two steps leaves nothing for long.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from events import StreamNames, new_event_id, user_key
from events.envelope import utc_now
from events.streams import ACTIVE_USER_KEY
from projections.registrations import lapsed_record_deletions
from runtime.eventlog import retention_min_id
from runtime.periodic import Periodic
from runtime.redis_scripts import Script, run_scripts

log = logging.getLogger(__name__)

SWEEP_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[4]))
local n = 0
local apart = {}  -- no user prefix given (Redis Cluster): the lapses are returned, their records deleted apart
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
    redis.call('HDEL', KEYS[2], aor)
    if ARGV[5] == '' then
      apart[#apart + 1] = aor
      apart[#apart + 1] = score
    else
      local user = ARGV[5] .. aor
      redis.call('DEL', user)
      redis.call('ZREM', KEYS[4], user)
    end
  end
end
local result = {n, #due / 2}
for i = 1, #apart do result[#result + 1] = apart[i] end
return result
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
        apart: bool = False,
    ) -> None:
        super().__init__(interval_s)
        self.redis = redis
        self.names = names
        self.retention_s = retention_s
        self.batch = batch
        self.clock = clock
        self.apart = apart  # Redis Cluster: records deleted apart (see the module's doc)
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
            keys: tuple[str, ...] = (self.names.expiry_due, self.names.registration_versions, self.names.registrations)
            if not self.apart:
                keys += (ACTIVE_USER_KEY,)
            prefix = "" if self.apart else user_key("")
            args: tuple[str | int, ...] = (now_ms, now_iso, min_id, self.batch, prefix, *ids)
            result: Any = await SWEEP_SCRIPT.run(self.redis, keys, args)
            appended, scanned = int(result[0]), int(result[1])
            if len(result) > 2:
                await self._delete_apart(result[2:])
            total += appended
            if scanned < self.batch:
                break
        if total:
            self.expired += total
            log.info("bindings expired count=%d", total)
        return total

    async def _delete_apart(self, lapses: list[Any]) -> None:
        """The records and `active-user` members of the lapses (aor, expiry ms, ...), each in its own slot."""
        commands = [
            command
            for aor, expiry in zip(lapses[::2], lapses[1::2], strict=True)
            for command in lapsed_record_deletions(_text(aor), int(expiry))
        ]
        await run_scripts(self.redis, commands)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
