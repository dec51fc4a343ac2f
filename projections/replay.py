"""`sbc-sidecar replay <projection>`: rebuild a projection from the streams (and the snapshot).

Registrations start from the snapshot of the live bindings (projections/snapshot.py) when there is one,
then apply the facts that follow what it covers: the log before it may have been trimmed.

The version index and due index are dropped, the snapshot's bindings restored, and every fact after it
applied again, oldest first, through the same compare-and-write script the live projection uses (live,
the registrar writes the same keys inline with its decisions). A binding comes back
only if it has not expired, with the TTL it has left; decisions committed at the same time stay
correct, since the script ignores any event older than the one a key last saw.
"""

from __future__ import annotations

import time

from events import RegistrationExpired, RegistrationGranted, RegistrationRemoved, StreamNames, user_key
from events.streams import ACTIVE_USER_KEY
from projections.registrations import APART_SCRIPTS, APPLY_SCRIPT, RegistrationsProjection
from projections.snapshot import load_snapshot
from runtime.eventlog import EventLog

CHUNK = 500


async def replay_registrations(
    eventlog: EventLog, clock: object = time.time, names: StreamNames | None = None
) -> dict[str, int]:
    """Rebuilds `user:<aor>`, `active-user` and the indexes of one partition (`names`, else the event log's): from
    the snapshot of the live bindings when there is one, then the facts that follow what it covers (all of them
    without a snapshot)."""
    names = names or eventlog.names
    redis = eventlog.redis
    now_ms = int(clock() * 1000)  # type: ignore[operator]
    snapshot = await load_snapshot(redis, names)
    stored = await eventlog.scan(names.registrations, after=snapshot.covers if snapshot else None)
    await redis.delete(names.registration_versions, names.expiry_due)
    live: dict[str, bool] = {}
    if snapshot is not None:
        for start in range(0, len(snapshot.bindings), CHUNK):
            pipe = redis.pipeline(transaction=False)
            for binding in snapshot.bindings[start : start + CHUNK]:
                ttl_s = (binding.expiry_ms - now_ms) // 1000
                if ttl_s < 1:
                    continue
                key = user_key(binding.aor)
                pipe.hset(names.registration_versions, binding.aor, binding.version)
                pipe.setex(key, ttl_s, binding.record)
                pipe.zadd(ACTIVE_USER_KEY, {key: binding.expiry_ms})
                pipe.zadd(names.expiry_due, {binding.aor: binding.expiry_ms})
                live[binding.aor] = True
            await pipe.execute()
    projection = RegistrationsProjection(names, clock, replay=True, apart=eventlog.cluster)  # type: ignore[arg-type]
    for script in (APPLY_SCRIPT, *APART_SCRIPTS):
        await redis.execute_command("SCRIPT", "LOAD", script.source)
    for start in range(0, len(stored), CHUNK):
        pipe = redis.pipeline(transaction=False)
        for item in stored[start : start + CHUNK]:
            event = item.event
            for command in projection.commands_for(item.entry_id, event):
                pipe.execute_command(*command)
            if isinstance(event, RegistrationGranted):
                live[event.aor] = event.expiry_time_ms - now_ms >= 1000
            elif isinstance(event, RegistrationRemoved | RegistrationExpired):
                live[event.aor] = False
        await pipe.execute()
    return {
        "events": len(stored),
        "bindings": sum(live.values()),
        "snapshot_bindings": len(snapshot.bindings) if snapshot else 0,
    }
