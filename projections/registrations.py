"""The registrations projection: `user:<aor>` JSON (SETEX) and the `active-user` sorted set (SPEC 2.8, 5.6).

Idempotent and order-safe: a hash remembers, per AOR, the stream id of the last event applied,
and a Lua script compares and writes atomically, so a replayed or late older event never
overwrites a newer binding. It also keeps the due-time index the expiry processor reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import msgspec

from events import (
    RegistrationExpired,
    RegistrationGranted,
    RegistrationRemoved,
    StreamNames,
    user_key,
)
from events.streams import ACTIVE_USER_KEY
from runtime.handling import Delivery, Outcome, RedisCommand
from runtime.redis_scripts import Script

log = logging.getLogger(__name__)

_json = msgspec.json.Encoder()

APPLY_LUA = """
-- KEYS: versions hash, user:<aor>, active-user, expiry-due
-- ARGV: aor, entry id, op (grant|remove|expire), record json, ttl s, expiry ms, lapsed grant id
local function newer(a, b)
  local ams, aseq = string.match(a, "^(%d+)-(%d+)$")
  local bms, bseq = string.match(b, "^(%d+)-(%d+)$")
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  if ams ~= bms then return ams > bms end
  return aseq > bseq
end
local aor, id, op = ARGV[1], ARGV[2], ARGV[3]
local current = redis.call('HGET', KEYS[1], aor)
if op == 'expire' then
  if current ~= ARGV[7] then return 0 end
  redis.call('HDEL', KEYS[1], aor)
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], KEYS[2])
  redis.call('ZREM', KEYS[4], aor)
  return 1
end
if current and not newer(id, current) then return 0 end
redis.call('HSET', KEYS[1], aor, id)
if op == 'grant' then
  local ttl = tonumber(ARGV[5])
  if ttl > 0 then
    redis.call('SETEX', KEYS[2], ttl, ARGV[4])
    redis.call('ZADD', KEYS[3], ARGV[6], KEYS[2])
    redis.call('ZADD', KEYS[4], ARGV[6], aor)
  else
    redis.call('DEL', KEYS[2])
    redis.call('ZREM', KEYS[3], KEYS[2])
    redis.call('ZREM', KEYS[4], aor)
  end
else
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], KEYS[2])
  redis.call('ZREM', KEYS[4], aor)
end
return 1
"""

APPLY_SCRIPT = Script("registrations-apply", APPLY_LUA)


def binding_record(event: RegistrationGranted) -> bytes:
    """The `user:<aor>` value, with jambonz's keys in jambonz's order; absent values are omitted."""
    record: dict[str, object] = {"contact": event.contact, "sbcAddress": event.sbc_address}
    optional = {
        "privateSbcAddress": event.private_sbc_address,
        "protocol": event.protocol,
        "proxy": event.proxy,
        "callHook": event.call_hook,
        "callStatusHook": event.call_status_hook,
    }
    record.update({key: value for key, value in optional.items() if value is not None})
    record["allow_direct_app_calling"] = event.allow_direct_app_calling
    record["allow_direct_queue_calling"] = event.allow_direct_queue_calling
    record["allow_direct_user_calling"] = event.allow_direct_user_calling
    record["expiryTime"] = event.expiry_time_ms
    return _json.encode(record)


class RegistrationsProjection:
    """Builds the Redis writes for a batch of registration facts (run in the consumer's commit)."""

    def __init__(self, names: StreamNames, clock: Callable[[], float] = time.time, *, replay: bool = False) -> None:
        self.names = names
        self.clock = clock
        self.replay = replay  # replay: the TTL is what is left of the grant, not the grant itself

    def commands_for(self, entry_id: str, event: object) -> list[RedisCommand]:
        names = self.names
        if isinstance(event, RegistrationGranted):
            aor = event.aor
            ttl = event.granted_expires_s
            if self.replay:
                ttl = int((event.expiry_time_ms - self.clock() * 1000) // 1000)
            args: tuple[str | int, ...] = (
                aor,
                entry_id,
                "grant",
                binding_record(event).decode(),
                ttl,
                event.expiry_time_ms,
                "",
            )
        elif isinstance(event, RegistrationRemoved):
            aor = event.aor
            args = (aor, entry_id, "remove", "", 0, 0, "")
        elif isinstance(event, RegistrationExpired):
            aor = event.aor
            args = (aor, entry_id, "expire", "", 0, 0, event.granted_event_id)
        else:
            return []
        keys = (names.registration_versions, user_key(aor), ACTIVE_USER_KEY, names.expiry_due)
        return [APPLY_SCRIPT.command(keys, args)]

    async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return [Outcome(writes=self.commands_for(d.entry_id, d.event)) for d in deliveries]
