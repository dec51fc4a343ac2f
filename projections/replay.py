"""`sbc-sidecar replay <projection>`: rebuild a projection from the streams.

Registrations: the version index and due index are dropped and every registration fact is
applied again, oldest first, through the same compare-and-write script the live projection
uses (live, the registrar writes the same keys inline with its decisions). A binding comes back
only if it has not expired, with the TTL it has left; decisions committed at the same time stay
correct, since the script ignores any event older than the one a key last saw.
"""

from __future__ import annotations

import time

from events import RegistrationExpired, RegistrationGranted, RegistrationRemoved, StreamNames
from projections.registrations import APPLY_SCRIPT, RegistrationsProjection
from runtime.eventlog import EventLog

CHUNK = 500


async def replay_registrations(eventlog: EventLog, clock: object = time.time) -> dict[str, int]:
    names: StreamNames = eventlog.names
    redis = eventlog.redis
    stored = await eventlog.scan(names.registrations)
    await redis.delete(names.registration_versions, names.expiry_due)
    projection = RegistrationsProjection(names, clock, replay=True)  # type: ignore[arg-type]
    live: dict[str, bool] = {}
    now_ms = int(clock() * 1000)  # type: ignore[operator]
    await redis.execute_command("SCRIPT", "LOAD", APPLY_SCRIPT.source)
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
    return {"events": len(stored), "bindings": sum(live.values())}
