"""The registrations projection: `user:<aor>` JSON (SETEX) and the `active-user` sorted set (SPEC 2.8, 5.6).

Inline: the registrar's commit writes the record with the fact that grants or removes the binding
(`inline`, registered on the event log for the `registrations` stream), and the expiry sweeper's
script deletes it with the `RegistrationExpired` it appends; so the record exists when the 200 OK
leaves. `commands_for` applies stored facts again, for `replay`.

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

_APPLY_FUNCTIONS = """
local function newer(a, b)
  local ams, aseq = string.match(a, "^(%d+)-(%d+)$")
  local bms, bseq = string.match(b, "^(%d+)-(%d+)$")
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  if ams ~= bms then return ams > bms end
  return aseq > bseq
end
-- versions hash, user:<aor>, active-user, expiry-due; aor, entry id, op (grant|remove|expire), record json,
-- ttl s, expiry ms, lapsed grant id
local function apply(versions, user, active, due, aor, id, op, record, ttl, expiry, lapsed)
  local current = redis.call('HGET', versions, aor)
  if op == 'expire' then
    if current ~= lapsed then return 0 end
    redis.call('HDEL', versions, aor)
    redis.call('DEL', user)
    redis.call('ZREM', active, user)
    redis.call('ZREM', due, aor)
    return 1
  end
  if current and not newer(id, current) then return 0 end
  redis.call('HSET', versions, aor, id)
  if op == 'grant' and tonumber(ttl) > 0 then
    redis.call('SETEX', user, tonumber(ttl), record)
    redis.call('ZADD', active, expiry, user)
    redis.call('ZADD', due, expiry, aor)
  else
    redis.call('DEL', user)
    redis.call('ZREM', active, user)
    redis.call('ZREM', due, aor)
  end
  return 1
end
"""

# KEYS: versions hash, user:<aor>, active-user, expiry-due
# ARGV: aor, entry id, op, record json, ttl s, expiry ms, lapsed grant id
APPLY_LUA = _APPLY_FUNCTIONS + "return apply(KEYS[1], KEYS[2], KEYS[3], KEYS[4], unpack(ARGV, 1, 7))\n"

# The inline projection: the fact's XADD and its record writes in one step, compared by the id just given.
# KEYS: versions hash, user:<aor>, active-user, expiry-due, stream
# ARGV: aor, op, record json, ttl s, expiry ms, then the XADD's arguments after the stream name
APPEND_APPLY_LUA = (
    _APPLY_FUNCTIONS
    + """
local id = redis.call('XADD', KEYS[5], unpack(ARGV, 6))
apply(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], id, ARGV[2], ARGV[3], ARGV[4], ARGV[5], '')
return id
"""
)

APPLY_SCRIPT = Script("registrations-apply", APPLY_LUA)
APPEND_APPLY_SCRIPT = Script("registrations-append-apply", APPEND_APPLY_LUA)


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

    def inline(self, xadd: Sequence[object], event: object) -> Sequence[object] | None:
        """The fact's XADD with its record writes, for the commit of the decision (None: a plain XADD).

        `xadd` is the event log's XADD command for the fact. A grant's `user:<aor>` and `active-user` (and
        a removal's deletions) then commit with the decision, its reply and its ack: the record exists
        when the SIP answer leaves, as the original wrote it before answering.
        """
        if isinstance(event, RegistrationGranted):
            aor = event.aor
            args: tuple[object, ...] = (
                aor,
                "grant",
                binding_record(event).decode(),
                event.granted_expires_s,
                event.expiry_time_ms,
            )
        elif isinstance(event, RegistrationRemoved):
            aor = event.aor
            args = (aor, "remove", "", 0, 0)
        else:
            return None
        names = self.names
        keys = (names.registration_versions, user_key(aor), ACTIVE_USER_KEY, names.expiry_due, str(xadd[1]))
        return ("EVALSHA", APPEND_APPLY_SCRIPT.sha, len(keys), *keys, *args, *xadd[2:])
