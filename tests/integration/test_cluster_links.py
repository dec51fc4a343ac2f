"""The hot path's lean connections on a real Redis Cluster of three masters (runtime/cluster.py)."""

from __future__ import annotations

import asyncio
import itertools
import os

import pytest
import redis as redis_sync
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import AskError, ResponseError

from bench.rediscluster import LocalCluster
from events import RegisterChallenged, default_codec, stamp
from events.streams import partition_names
from runtime.cluster import ClusterLinks, command_keys, key_slot
from runtime.errors import StoreUnavailable
from runtime.eventlog import Appender, EventLog
from runtime.resp import LinkSettings
from runtime.settings import EventLogSettings
from tests.conftest import free_port


def test_command_keys_as_the_cluster_sees_them() -> None:
    assert command_keys(("XADD", "s", "*", "f", "v")) == ("s",)
    assert command_keys(("EVALSHA", "abc", 2, "k1", "k2", "arg")) == ("k1", "k2")
    assert command_keys(("MGET", "a", "b")) == ("a", "b")
    assert command_keys(("XREADGROUP", "GROUP", "g", "c", "COUNT", 5, "STREAMS", "s1", "s2", ">", ">")) == ("s1", "s2")
    assert command_keys(("XGROUP", "CREATE", "s", "g", "$")) == ("s",)
    assert command_keys(("SCRIPT", "LOAD", "return 1")) == ()
    assert key_slot("{7}:a") == key_slot("x{7}") != key_slot("user:alice@example.com")


@pytest.fixture
def links(redis_cluster: LocalCluster) -> ClusterLinks:
    return ClusterLinks(LinkSettings("127.0.0.1", redis_cluster.ports[0]))


def plain(redis_cluster: LocalCluster) -> RedisCluster:
    return RedisCluster(host="127.0.0.1", port=redis_cluster.ports[1])


async def test_commands_reach_the_master_of_their_slot_and_a_stale_map_is_corrected(
    redis_cluster: LocalCluster, links: ClusterLinks
) -> None:
    keys = [f"links-test:{i}" for i in range(60)]  # spread over every master
    assert len({redis_cluster.owner_of(k).port for k in keys}) == 3
    replies = await links.pipeline([("SET", key, key) for key in keys])
    assert replies == [b"OK"] * len(keys)
    assert await links.mget(keys) == [key.encode() for key in keys]
    refreshes = links.refreshes
    # Every slot believed to be on one master: the others' keys are answered MOVED, and sent again to their owner.
    wrong = (redis_cluster.masters[0].client().connection_pool.connection_kwargs["host"], redis_cluster.ports[0])
    links._owners = [wrong] * 16384  # noqa: SLF001 - a map gone stale, as after a resharding
    assert await links.mget(keys) == [key.encode() for key in keys]
    assert links.refreshes == refreshes + 1
    assert await links.pipeline([("DEL", key) for key in keys]) == [1] * len(keys)
    links.close()


async def test_commit_writes_other_slots_first_and_replies_after_the_exec(
    redis_cluster: LocalCluster, links: ClusterLinks
) -> None:
    home, record, reply = "{p9}:stream", "user:commit-test@example.com", "{p0}:replies:x"
    assert len({key_slot(home), key_slot(record), key_slot(reply)}) == 3
    client = plain(redis_cluster)
    client.delete(home, record, reply)

    def after(command: object) -> bool:
        return command[0] == "XADD" and str(command[1]).endswith(":replies:x")  # type: ignore[index]

    await links.commit(
        [
            ("SET", record, "r"),
            ("XADD", reply, "*", "type", "ReplyIssued"),
            ("XADD", home, "*", "type", "Fact"),
            ("XACK", home, "group", "1-0"),  # the commit's home: the slot of the streams it acknowledges
            ("HSET", "{p9}:checkpoint", home, "1-0"),
        ],
        after=after,
    )
    assert client.get(record) == b"r" and client.xlen(home) == 1 and client.xlen(reply) == 1
    # A failing MULTI: the record of another slot is already written (it goes first), the reply never is.
    client.delete(reply)
    client.set("{p9}:not-a-stream", "x")
    with pytest.raises(ResponseError):
        await links.commit(
            [
                ("SET", record, "r2"),
                ("XADD", reply, "*", "type", "ReplyIssued"),
                ("XADD", "{p9}:not-a-stream", "*", "type", "Fact"),
                ("XACK", home, "group", "1-0"),
            ],
            after=after,
        )
    assert client.get(record) == b"r2"
    assert client.xlen(reply) == 0
    # A transaction may not span slots: refused before anything is sent.
    with pytest.raises(ValueError, match="spans"):
        await links.transaction([("SET", "{a}x", 1), ("SET", "{b}x", 1)])
    client.delete(home, record, "{p9}:checkpoint", "{p9}:not-a-stream")
    client.close()
    links.close()


def test_the_local_cluster_serves_every_slot(redis_cluster: LocalCluster) -> None:
    info = redis_sync.Redis(port=redis_cluster.ports[2]).execute_command("CLUSTER", "INFO")
    assert b"cluster_state:ok" in info and b"cluster_slots_assigned:16384" in info


async def test_a_key_of_a_slot_being_migrated_is_read_at_the_importing_master(
    redis_cluster: LocalCluster, links: ClusterLinks
) -> None:
    """A real migration (CLUSTER SETSLOT MIGRATING / IMPORTING, MIGRATE): the source answers ASK for the key that has
    gone, the link asks the importing master with ASKING and keeps its map; once the slot is assigned, MOVED."""
    key = "links-test:migrating"
    slot = key_slot(key)
    source = redis_cluster.owner_of(key)
    target = next(m for m in redis_cluster.masters if m is not source)
    source_id = source.client().execute_command("CLUSTER", "MYID").decode()
    target_id = target.client().execute_command("CLUSTER", "MYID").decode()
    await links.command("SET", key, "before the move")
    refreshes = links.refreshes
    target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    try:
        source.client().execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", key)
        with pytest.raises(AskError):  # gone from the source: it sends the client to the importing master
            source.client().get(key)
        assert await links.command("GET", key) == b"before the move"
        assert links.refreshes == refreshes  # ASK is no reason to read the map again
    finally:
        for master in redis_cluster.masters:  # the slot is the target's now, for every master
            master.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    redis_cluster.wait_ok()
    assert await links.command("GET", key) == b"before the move"  # MOVED: the map read again
    assert links.refreshes == refreshes + 1
    await links.command("DEL", key)
    links.close()


async def test_an_unreachable_master_fails_only_its_own_appends(redis_cluster: LocalCluster) -> None:
    """Ingest's appends go to several masters at once (one partition each): those of a master that cannot be reached
    fail (their phones get 500), the others are stored and their requests will be decided, so no phone is told 500
    about a request that is then decided anyway."""
    cluster_id = f"appends{os.getpid()}"
    live, gone = next(
        (a, b)
        for a, b in itertools.permutations(partition_names(cluster_id, 8), 2)
        if redis_cluster.owner_of(a.requests).port != redis_cluster.owner_of(b.requests).port
    )
    client = AsyncRedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    seed = LinkSettings("127.0.0.1", redis_cluster.ports[0])
    eventlog = EventLog(client, default_codec(), live, EventLogSettings(cluster_id), seed)  # type: ignore[arg-type]
    cluster = eventlog._cluster  # noqa: SLF001 - its slot map, pointed at a master that is not there
    assert cluster is not None
    await cluster.refresh()
    assert cluster._owners is not None  # noqa: SLF001
    cluster._owners[key_slot(gone.requests)] = ("127.0.0.1", free_port())  # noqa: SLF001
    appender = Appender(eventlog)
    loop = asyncio.get_running_loop()
    stored, refused = loop.create_future(), loop.create_future()
    try:
        appender.submit(live.requests, stamped_challenge(), stored)
        appender.submit(gone.requests, stamped_challenge(), refused)
        await appender.close()
        assert isinstance(refused.exception(), StoreUnavailable)
        assert "cannot connect" in str(refused.exception())
        assert not stored.done()  # untouched: its reply will resolve it
        assert await client.xlen(live.requests) == 1
    finally:
        await client.delete(live.requests)
        eventlog.close()
        await client.aclose()


def stamped_challenge() -> RegisterChallenged:
    return RegisterChallenged(
        **stamp(), aor="a@example.com", realm="example.com", nonce="n", source_ip="127.0.0.1", source_port=5060,
        call_id="c",
    )  # fmt: skip
