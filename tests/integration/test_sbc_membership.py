"""SBC membership against the real Redis: heartbeats, `sbcs`, and the clean-up after a gone SBC (once, by one
peer, only a reply deadline after its heartbeat lapsed, never while its heartbeat lives)."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis

from events import StreamNames
from events.streams import edge_group
from ingest.membership import Membership, read_sbcs
from tests.conftest import REDIS_DB, REDIS_HOST, REDIS_PORT, sidecar_cli


def member(redis: Redis, names: StreamNames, ingest_id: str, **kwargs: float) -> Membership:
    address = f"udp/10.200.0.{len(ingest_id)}:5070"
    return Membership(redis, names, ingest_id, lambda: address, public_address="192.0.2.7", **kwargs)


async def a_dead_sbc(redis: Redis, names: StreamNames, ingest_id: str) -> None:
    """An SBC that announced itself, had a reply stream and an edge group, and died without a word."""
    await member(redis, names, ingest_id).announce()
    await redis.xadd(names.replies(ingest_id), {"type": "ReplyIssued"})
    await redis.xgroup_create(names.commands, edge_group(ingest_id), id="$", mkstream=True)
    await redis.delete(names.sbc_alive(ingest_id))  # its heartbeat lapsed


async def groups_of_commands(redis: Redis, names: StreamNames) -> set[str]:
    groups = await redis.xinfo_groups(names.commands)
    return {g["name"].decode() for g in groups}


async def test_heartbeat_key_has_a_ttl_and_sbcs_lists_live_ones(redis: Redis, names: StreamNames) -> None:
    a = member(redis, names, "sbc-a")
    a.started_at_ms = 1_700_000_000_000
    await a.announce()
    ttl_ms = await redis.pttl(names.sbc_alive("sbc-a"))
    assert 2000 < ttl_ms <= 3000
    record = json.loads(await redis.get(names.sbc_alive("sbc-a")))
    assert record["sbc_address"] == "udp/10.200.0.5:5070" and record["public_address"] == "192.0.2.7"
    assert record["started_at_ms"] == 1_700_000_000_000 and record["pid"] > 0 and record["host"]

    [status] = await read_sbcs(redis, names)
    assert (status.ingest_id, status.state, status.cleaned_at_ms) == ("sbc-a", "live", None)
    assert 0 <= status.now_ms - status.last_seen_ms < 1000


async def test_a_gone_sbc_is_cleaned_up_after_the_reply_deadline_by_one_peer(redis: Redis, names: StreamNames) -> None:
    await a_dead_sbc(redis, names, "sbc-a")
    b = member(redis, names, "sbc-b", reply_deadline_s=0.5, alive_ttl_s=0.05)
    c = member(redis, names, "sbc-c", reply_deadline_s=0.5, alive_ttl_s=0.05)
    await b.announce()
    await c.announce()

    await b.clean_up()  # within the deadline: a reply may still be on its way to a waiting request
    assert await redis.exists(names.replies("sbc-a")) == 1
    assert edge_group("sbc-a") in await groups_of_commands(redis, names)

    await asyncio.sleep(0.6)
    await asyncio.gather(b.announce(), c.announce())  # their own heartbeats go on
    await asyncio.gather(b.clean_up(), c.clean_up())
    assert b.peers_cleaned + c.peers_cleaned == 1  # once
    assert await redis.exists(names.replies("sbc-a")) == 0
    assert edge_group("sbc-a") not in await groups_of_commands(redis, names)
    assert await redis.hexists(names.sbc_cleaned, "sbc-a")

    # A late reply re-created the stream: removed again, but the clean-up is not counted twice.
    await redis.xadd(names.replies("sbc-a"), {"type": "ReplyIssued"})
    await b.clean_up()
    await c.clean_up()
    assert await redis.exists(names.replies("sbc-a")) == 0
    assert b.peers_cleaned + c.peers_cleaned == 1

    states = {s.ingest_id: s for s in await read_sbcs(redis, names)}
    assert [states[i].state for i in ("sbc-a", "sbc-b", "sbc-c")] == ["dead", "live", "live"]
    assert states["sbc-a"].cleaned_at_ms is not None
    assert states["sbc-a"].announcement is not None
    assert states["sbc-a"].announcement.sbc_address == "udp/10.200.0.5:5070"


async def test_requests_taken_after_the_last_heartbeat_keep_the_reply_stream_until_their_deadline(
    redis: Redis, names: StreamNames
) -> None:
    """An SBC takes requests until it dies, up to a heartbeat interval after its last heartbeat: the reply deadline
    is counted from when its key lapsed, not from its last heartbeat."""
    a = member(redis, names, "sbc-a", alive_ttl_s=0.3)
    b = member(redis, names, "sbc-b", reply_deadline_s=0.5, alive_ttl_s=0.3)
    await a.announce()  # its last heartbeat
    await redis.xadd(names.replies("sbc-a"), {"type": "ReplyIssued"})
    await asyncio.sleep(0.25)  # A takes a request (its deadline 0.5 s from now, at 0.75 s) and dies
    await b.announce()
    await asyncio.sleep(0.4)  # 0.65 s: past the last heartbeat's reply deadline, not the request's
    await b.clean_up()
    assert await redis.exists(names.replies("sbc-a")) == 1 and b.peers_cleaned == 0
    await asyncio.sleep(0.2)  # 0.85 s: its key lapsed (0.3 s) a reply deadline (0.5 s) ago
    await b.announce()
    await b.clean_up()
    assert await redis.exists(names.replies("sbc-a")) == 0 and b.peers_cleaned == 1


async def test_a_live_sbc_is_never_cleaned_up_and_one_that_comes_back_is_live(redis: Redis, names: StreamNames) -> None:
    a = member(redis, names, "sbc-a")
    await a.announce()
    await redis.xadd(names.replies("sbc-a"), {"type": "ReplyIssued"})
    seconds, _ = await redis.time()
    await redis.zadd(names.sbc_seen, {"sbc-a": seconds * 1000 - 5000})  # an old last-seen, but its key lives
    b = member(redis, names, "sbc-b", reply_deadline_s=0.1)
    await b.clean_up()
    assert await redis.exists(names.replies("sbc-a")) == 1 and b.peers_cleaned == 0

    await redis.delete(names.sbc_alive("sbc-a"))
    await b.clean_up()
    assert b.peers_cleaned == 1 and await redis.exists(names.replies("sbc-a")) == 0
    await a.announce()  # back (a long pause, not a death): live again, its clean-up record gone
    [status] = [s for s in await read_sbcs(redis, names) if s.ingest_id == "sbc-a"]
    assert (status.state, status.cleaned_at_ms) == ("live", None)


async def test_a_gone_sbc_is_forgotten_after_a_while(redis: Redis, names: StreamNames) -> None:
    await a_dead_sbc(redis, names, "sbc-a")
    b = member(redis, names, "sbc-b", reply_deadline_s=0.1, forget_after_s=0.4, alive_ttl_s=0.05)
    await asyncio.sleep(0.2)
    await b.clean_up()
    assert b.peers_cleaned == 1
    await asyncio.sleep(0.3)
    await b.clean_up()
    assert b.peers_forgotten == 1
    assert await redis.zscore(names.sbc_seen, "sbc-a") is None
    assert not await redis.hexists(names.sbc_details, "sbc-a")
    assert not await redis.hexists(names.sbc_cleaned, "sbc-a")


async def test_the_worker_heartbeats_and_signs_off_on_a_clean_stop(redis: Redis, names: StreamNames) -> None:
    a = member(redis, names, "sbc-a")
    task = asyncio.create_task(a.run())
    await asyncio.wait_for(a.ready.wait(), 2)
    await asyncio.sleep(1.2)
    assert a.announced >= 2
    a.stop()
    await asyncio.wait_for(task, 3)
    assert await redis.exists(names.sbc_alive("sbc-a")) == 0
    [status] = await read_sbcs(redis, names)
    assert status.state == "stopped"
    assert status.announcement is not None and status.announcement.stopped_at_ms is not None


async def test_sbcs_command_prints_live_and_dead(redis: Redis, names: StreamNames, cluster_id: str) -> None:
    await a_dead_sbc(redis, names, "sbc-a")
    seconds, _ = await redis.time()
    await redis.zadd(names.sbc_seen, {"sbc-a": seconds * 1000 - 5000})  # its last heartbeat 5 s ago
    b = member(redis, names, "sbc-b", reply_deadline_s=0.1)
    await b.announce()
    await b.clean_up()
    env = {
        "JAMBONES_REDIS_HOST": REDIS_HOST,
        "JAMBONES_REDIS_PORT": str(REDIS_PORT),
        "SIDECAR_REDIS_DB": str(REDIS_DB),
        "JAMBONES_CLUSTER_ID": cluster_id,
    }
    result = await asyncio.to_thread(sidecar_cli, env, "sbcs")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("sbc-b  live") and "sip udp/10.200.0.5:5070" in lines[0]
    assert lines[1].startswith("sbc-a  dead") and "reply stream and edge group removed" in lines[1]
    assert "public 192.0.2.7" in lines[1] and "pid " in lines[1]
