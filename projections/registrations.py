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
-- ttl s, expiry ms, lapsed grant id. `user` and `active` false: the record lives in another slot (Redis Cluster)
-- and is written apart, before the commit (runtime/cluster.py).
local function apply(versions, user, active, due, aor, id, op, record, ttl, expiry, lapsed)
  local current = redis.call('HGET', versions, aor)
  if op == 'expire' then
    if current ~= lapsed then return 0 end
    redis.call('HDEL', versions, aor)
    if user then
      redis.call('DEL', user)
      redis.call('ZREM', active, user)
    end
    redis.call('ZREM', due, aor)
    return 1
  end
  if current and not newer(id, current) then return 0 end
  redis.call('HSET', versions, aor, id)
  if op == 'grant' and tonumber(ttl) > 0 then
    if user then
      redis.call('SETEX', user, tonumber(ttl), record)
      redis.call('ZADD', active, expiry, user)
    end
    redis.call('ZADD', due, expiry, aor)
  else
    if user then
      redis.call('DEL', user)
      redis.call('ZREM', active, user)
    end
    redis.call('ZREM', due, aor)
  end
  return 1
end
"""

# KEYS: versions hash, user:<aor>, active-user, expiry-due
# ARGV: aor, entry id, op, record json, ttl s, expiry ms, lapsed grant id
APPLY_LUA = _APPLY_FUNCTIONS + "return apply(KEYS[1], KEYS[2], KEYS[3], KEYS[4], unpack(ARGV, 1, 7))\n"
# The partition's part alone (Redis Cluster). KEYS: versions hash, expiry-due; ARGV as above.
APPLY_APART_LUA = _APPLY_FUNCTIONS + "return apply(KEYS[1], false, false, KEYS[2], unpack(ARGV, 1, 7))\n"

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

# The same on a Redis Cluster, where `user:<aor>` and `active-user` are in slots of their own: the partition's
# part alone (the versions, the due index, the fact). KEYS: versions hash, expiry-due, stream; ARGV as above.
APPEND_APPLY_APART_LUA = (
    _APPLY_FUNCTIONS
    + """
local id = redis.call('XADD', KEYS[3], unpack(ARGV, 6))
apply(KEYS[1], false, false, KEYS[2], ARGV[1], id, ARGV[2], ARGV[3], ARGV[4], ARGV[5], '')
return id
"""
)

# A lapse's record, deleted apart (Redis Cluster): only while it is still the lapsed grant's, so that a grant
# written between the sweep and this deletion is never taken away. KEYS: user:<aor>; ARGV: its expiryTime (ms).
# A record without expiryTime (written by something else) is left alone.
DELETE_LAPSED_RECORD_LUA = """
local value = redis.call('GET', KEYS[1])
if not value then return 0 end
local ok, record = pcall(cjson.decode, value)
if not ok or type(record) ~= 'table' or not record.expiryTime then return 0 end
if tonumber(record.expiryTime) > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# The `active-user` member of a lapse, removed apart: only while its score (expiry) is not later than the lapse's.
# KEYS: active-user; ARGV: member, expiry (ms).
REMOVE_LAPSED_MEMBER_LUA = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

APPLY_SCRIPT = Script("registrations-apply", APPLY_LUA)
APPLY_APART_SCRIPT = Script("registrations-apply-apart", APPLY_APART_LUA)
APPEND_APPLY_SCRIPT = Script("registrations-append-apply", APPEND_APPLY_LUA)
APPEND_APPLY_APART_SCRIPT = Script("registrations-append-apply-apart", APPEND_APPLY_APART_LUA)
DELETE_LAPSED_RECORD_SCRIPT = Script("registrations-delete-lapsed-record", DELETE_LAPSED_RECORD_LUA)
REMOVE_LAPSED_MEMBER_SCRIPT = Script("registrations-remove-lapsed-member", REMOVE_LAPSED_MEMBER_LUA)
APART_SCRIPTS = (APPLY_APART_SCRIPT, DELETE_LAPSED_RECORD_SCRIPT, REMOVE_LAPSED_MEMBER_SCRIPT)


def record_writes(event: RegistrationGranted | RegistrationRemoved, ttl: int | None = None) -> list[RedisCommand]:
    """The writes of `user:<aor>` and `active-user` for a grant or a removal, as plain commands (each on one key):
    on a Redis Cluster they run apart from the partition's commit, before it."""
    user = user_key(event.aor)
    if isinstance(event, RegistrationGranted):
        seconds = event.granted_expires_s if ttl is None else ttl
        if seconds > 0:
            return [
                ("SETEX", user, seconds, binding_record(event).decode()),
                ("ZADD", ACTIVE_USER_KEY, event.expiry_time_ms, user),
            ]
    return [("DEL", user), ("ZREM", ACTIVE_USER_KEY, user)]


def lapsed_record_deletions(aor: str, expiry_time_ms: int) -> list[RedisCommand]:
    """The record and `active-user` member of a lapsed binding, deleted apart (Redis Cluster), each only while it is
    still the lapsed one."""
    user = user_key(aor)
    return [
        DELETE_LAPSED_RECORD_SCRIPT.command((user,), (expiry_time_ms,)),
        REMOVE_LAPSED_MEMBER_SCRIPT.command((ACTIVE_USER_KEY,), (user, expiry_time_ms)),
    ]


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

    def __init__(
        self,
        names: StreamNames,
        clock: Callable[[], float] = time.time,
        *,
        replay: bool = False,
        apart: bool = False,
    ) -> None:
        self.names = names
        self.clock = clock
        self.replay = replay  # replay: the TTL is what is left of the grant, not the grant itself
        # apart (Redis Cluster): `user:<aor>` and `active-user` are written by commands of their own, each in its
        # slot, not by the partition's script
        self.apart = apart

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
        if self.apart:
            if isinstance(event, RegistrationExpired):
                apart = lapsed_record_deletions(aor, event.expiry_time_ms)
            else:
                apart = record_writes(event, ttl if isinstance(event, RegistrationGranted) else None)
            return [*apart, APPLY_APART_SCRIPT.command((names.registration_versions, names.expiry_due), args)]
        keys = (names.registration_versions, user_key(aor), ACTIVE_USER_KEY, names.expiry_due)
        return [APPLY_SCRIPT.command(keys, args)]

    async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return [Outcome(writes=self.commands_for(d.entry_id, d.event)) for d in deliveries]

    def inline(self, xadd: Sequence[object], event: object) -> list[Sequence[object]] | None:
        """The fact's XADD with its record writes, for the commit of the decision (None: a plain XADD).

        `xadd` is the event log's XADD command for the fact. A grant's `user:<aor>` and `active-user` (and
        a removal's deletions) then commit with the decision, its reply and its ack: the record exists
        when the SIP answer leaves, as the original wrote it before answering. Apart (Redis Cluster), the
        record's writes are commands of their own, which the commit runs first, each in its slot.
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
        if self.apart:
            apart = (names.registration_versions, names.expiry_due, str(xadd[1]))
            script = APPEND_APPLY_APART_SCRIPT.sha
            return [*record_writes(event), ("EVALSHA", script, len(apart), *apart, *args, *xadd[2:])]
        keys = (names.registration_versions, user_key(aor), ACTIVE_USER_KEY, names.expiry_due, str(xadd[1]))
        return [("EVALSHA", APPEND_APPLY_SCRIPT.sha, len(keys), *keys, *args, *xadd[2:])]
