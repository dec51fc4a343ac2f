"""The registrations projection and the expiry processor against the real Redis.

Order-safety (a late or replayed older event never overwrites a newer binding), the jambonz record,
and exactly one RegistrationExpired per lapse however many sweepers run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from events import (
    RegistrationExpired,
    RegistrationGranted,
    RegistrationRemoved,
    StreamNames,
    stamp,
    user_key,
)
from events.streams import ACTIVE_USER_KEY
from processors.expiry import ExpirySweeper
from projections.registrations import RegistrationsProjection
from runtime.eventlog import EventLog
from runtime.redis_scripts import scripts_used


@pytest.fixture
async def aor(cluster_id: str, redis: Redis) -> AsyncIterator[str]:
    name = f"alice-{cluster_id}@example.org"
    yield name
    await redis.delete(user_key(name))
    await redis.zrem(ACTIVE_USER_KEY, user_key(name))


def granted(aor: str, expires_s: int, contact: str = "sip:alice@10.0.0.1:5060", now_ms: int | None = None):
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return RegistrationGranted(
        **stamp(),
        aor=aor,
        contact=contact,
        sbc_address="udp/192.0.2.1:5060",
        protocol="udp",
        proxy="sip:10.0.0.1:5060",
        granted_expires_s=expires_s,
        advertised_expires_s=min(expires_s, 30),
        expiry_time_ms=now_ms + expires_s * 1000,
        source_ip="10.0.0.1",
        source_port=5060,
        call_id="c",
    )


async def apply(redis: Redis, projection: RegistrationsProjection, entry_id: str, event: object) -> None:
    for command in projection.commands_for(entry_id, event):
        for script in scripts_used([command]):
            await redis.execute_command("SCRIPT", "LOAD", script.source)
        await redis.execute_command(*command)


async def test_record_is_jambonz_json_with_ttl_and_score(redis: Redis, names: StreamNames, aor: str) -> None:
    projection = RegistrationsProjection(names)
    event = granted(aor, 45)
    await apply(redis, projection, "100-0", event)
    raw = await redis.get(user_key(aor))
    assert raw == (
        b'{"contact":"sip:alice@10.0.0.1:5060","sbcAddress":"udp/192.0.2.1:5060","protocol":"udp",'
        b'"proxy":"sip:10.0.0.1:5060","allow_direct_app_calling":false,"allow_direct_queue_calling":false,'
        b'"allow_direct_user_calling":false,"expiryTime":' + str(event.expiry_time_ms).encode() + b"}"
    )
    assert 44 <= await redis.ttl(user_key(aor)) <= 45
    assert await redis.zscore(ACTIVE_USER_KEY, user_key(aor)) == event.expiry_time_ms


async def test_older_events_never_overwrite_newer_ones(redis: Redis, names: StreamNames, aor: str) -> None:
    projection = RegistrationsProjection(names)
    newer = granted(aor, 60, contact="sip:alice@10.0.0.2:5060")
    older = granted(aor, 45, contact="sip:alice@10.0.0.1:5060")
    await apply(redis, projection, "200-0", newer)
    await apply(redis, projection, "150-3", older)  # late
    await apply(
        redis, projection, "199-9", RegistrationRemoved(**stamp(), aor=aor, source_ip="x", source_port=1, call_id="c")
    )  # late removal
    record = json.loads(await redis.get(user_key(aor)))
    assert record["contact"] == "sip:alice@10.0.0.2:5060"
    await apply(redis, projection, "200-0", newer)  # replayed: same result
    assert json.loads(await redis.get(user_key(aor)))["contact"] == "sip:alice@10.0.0.2:5060"
    # an expiry of a binding that is no longer the current one changes nothing
    await apply(
        redis, projection, "300-0", RegistrationExpired(**stamp(), aor=aor, expiry_time_ms=1, granted_event_id="150-3")
    )
    assert await redis.exists(user_key(aor))
    await apply(
        redis, projection, "301-0", RegistrationRemoved(**stamp(), aor=aor, source_ip="x", source_port=1, call_id="c")
    )
    assert not await redis.exists(user_key(aor))
    assert await redis.zscore(ACTIVE_USER_KEY, user_key(aor)) is None


async def test_one_expiry_event_per_lapse_with_two_sweepers(
    redis: Redis, names: StreamNames, eventlog: EventLog, aor: str
) -> None:
    projection = RegistrationsProjection(names)
    now_ms = int(time.time() * 1000)
    lapsing = granted(aor, 1, now_ms=now_ms - 5_000)  # its expiry time is already past
    [entry_id] = await eventlog.append(names.registrations, [lapsing])
    await apply(redis, projection, entry_id, lapsing)
    other = f"bob-{names.cluster_id}@example.org"
    alive = granted(other, 300)
    [alive_id] = await eventlog.append(names.registrations, [alive])
    await apply(redis, projection, alive_id, alive)
    try:
        sweepers = [ExpirySweeper(redis, names, eventlog.settings.retention_s) for _ in range(2)]
        counts = await asyncio.gather(*(s.sweep() for s in sweepers for _ in range(3)))
        assert sum(counts) == 1
        expired = [e for e in await eventlog.read(names.registrations) if isinstance(e.event, RegistrationExpired)]
        assert len(expired) == 1
        event = expired[0].event
        assert isinstance(event, RegistrationExpired)
        assert event.aor == aor and event.granted_event_id == entry_id
        assert event.expiry_time_ms == lapsing.expiry_time_ms
        # The sweep removed the record with the event (inline): nothing is left for a projection to do.
        assert not await redis.exists(user_key(aor))
        assert await redis.zscore(ACTIVE_USER_KEY, user_key(aor)) is None
        assert await redis.hget(names.registration_versions, aor) is None
        assert await redis.exists(user_key(other))
        assert await redis.zscore(ACTIVE_USER_KEY, user_key(other)) == alive.expiry_time_ms
    finally:
        await redis.delete(user_key(other))
        await redis.zrem(ACTIVE_USER_KEY, user_key(other))


async def test_inline_the_fact_and_its_record_commit_together_and_stay_order_safe(
    redis: Redis, names: StreamNames, eventlog: EventLog, aor: str
) -> None:
    projection = RegistrationsProjection(names)
    eventlog.project_inline(names.registrations, projection.inline)
    grant = granted(aor, 120)
    [command] = eventlog.append_commands(names.registrations, grant)
    assert command[0] == "EVALSHA"
    await eventlog.commit([command], scripts_used([command]))
    [stored] = await eventlog.read(names.registrations)
    assert stored.event == grant
    assert json.loads(await redis.get(user_key(aor)))["contact"] == grant.contact
    assert 118 <= await redis.ttl(user_key(aor)) <= 120
    assert await redis.zscore(ACTIVE_USER_KEY, user_key(aor)) == grant.expiry_time_ms
    assert (await redis.hget(names.registration_versions, aor)).decode() == stored.entry_id
    # A replay of an older grant (the async path) does not overwrite what the inline write stored.
    older = granted(aor, 60, contact="sip:alice@10.0.0.9:5060")
    await apply(redis, projection, "1-1", older)
    assert json.loads(await redis.get(user_key(aor)))["contact"] == grant.contact
    # A removal commits its deletions the same way; facts of other kinds stay plain XADDs.
    removal = RegistrationRemoved(**stamp(), aor=aor, source_ip="10.0.0.1", source_port=5060, call_id="c")
    commands = eventlog.append_commands(names.registrations, removal)
    await eventlog.commit(commands, scripts_used(commands))
    assert not await redis.exists(user_key(aor))
    assert await redis.zscore(ACTIVE_USER_KEY, user_key(aor)) is None
    assert await redis.zscore(names.expiry_due, aor) is None
    lapse = RegistrationExpired(**stamp(), aor=aor, expiry_time_ms=0, granted_event_id="1-1")
    [command] = eventlog.append_commands(names.registrations, lapse)
    assert command[0] == "XADD"
