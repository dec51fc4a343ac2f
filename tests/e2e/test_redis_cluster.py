"""The service on a real local Redis Cluster of three masters (bench/rediscluster.py), with SIDECAR_PARTITIONS=3.

Phones (bench/phones.py: real UDP REGISTERs, digest answered) register against the webhook of the bench account;
each AOR's requests and facts go to its partition (CRC32 of the AOR mod 3), each partition's streams in one slot,
the jambonz records in slots of their own. Then the master that holds partition 0 (the reply, heartbeat and
carrier streams with it) is killed with SIGKILL and started again while the phones refresh.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from bench.infrastructure import BenchDatabase, Tenant
from bench.phones import Fleet, RoundTally
from bench.processes import ProcessGroup
from bench.rediscluster import LocalCluster
from bench.sidecar import start_webhook
from events import StreamNames
from events.streams import partition_of
from tests.conftest import base_env, sidecar_cli
from tests.e2e.conftest import start_sidecar, stop_sidecar
from tests.e2e.test_heartbeat_sip import Peer

PHONES = 150
PARTITIONS = 3
RATE_PER_S = 100  # SIP transactions per second
RESTART_AFTER_S = 1.0  # into the refresh round, the master is killed ...
DOWN_FOR_S = 1.5  # ... and started again this much later (less than the cluster's node timeout, 2 s)

pytestmark = [pytest.mark.timeout(300)]


def granted_per_partition(client: RedisCluster, cluster_id: str) -> dict[int, int]:
    """RegistrationGranted facts on each partition's `registrations` stream."""
    counts: dict[int, int] = {}
    for partition in range(PARTITIONS):
        entries = client.xrange(StreamNames(cluster_id, partition).registrations)
        counts[partition] = sum(1 for _, fields in entries if fields[b"type"] == b"RegistrationGranted")
    return counts


def failures_of(tally: RoundTally) -> Counter[str]:
    return Counter(tally.failures)


async def test_registrations_spread_over_partitions_and_a_master_restarted_under_load(
    redis_cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster_id = f"cl{os.getpid()}{os.urandom(2).hex()}"
    partition_zero = StreamNames(cluster_id, 0).requests
    victim = redis_cluster.owner_of(partition_zero)
    seed = next(m for m in redis_cluster.masters if m is not victim)  # the service is pointed at another node
    tenant = Tenant()
    database = BenchDatabase()
    client = RedisCluster(host="127.0.0.1", port=seed.port)
    async with ProcessGroup(tmp_path) as processes:
        _, webhook_port = await start_webhook(processes, tenant)
        await database.create(tenant, f"http://127.0.0.1:{webhook_port}/auth")
        env = {
            "JAMBONES_REDIS_PORT": str(seed.port),
            "SIDECAR_REDIS_DB": "0",
            "SIDECAR_PARTITIONS": str(PARTITIONS),
            "JAMBONES_NETWORK_CIDR": "127.0.0.0/8",
        }
        sidecar = await start_sidecar(cluster_id, database.name, env=env)
        try:
            async with Fleet(
                PHONES, target_port=sidecar.udp_port, realm=tenant.realm, password=tenant.user_password
            ) as fleet:
                phones = fleet.phones
                # 1. Every phone registers (401, then 200 from the webhook); each AOR's facts in its partition.
                first = await Fleet.round(phones, RATE_PER_S, transactions_each=2)
                assert first.full == PHONES and not first.failures, first.as_dict()
                expected = Counter(partition_of(f"{p.user}@{tenant.realm}", PARTITIONS) for p in phones)
                assert granted_per_partition(client, cluster_id) == dict(expected)
                assert all(expected[p] > 0 for p in range(PARTITIONS))
                masters = {
                    p: redis_cluster.owner_of(StreamNames(cluster_id, p).requests).port for p in range(PARTITIONS)
                }
                records = {p.user: client.get(f"user:{p.user}@{tenant.realm}") for p in phones}
                assert all(records.values()), [user for user, record in records.items() if record is None]
                for phone in phones:
                    assert json.loads(records[phone.user])["contact"].endswith(f":{phone.local_port};transport=udp")
                record_masters = Counter(redis_cluster.owner_of(f"user:{p.user}@{tenant.realm}").port for p in phones)
                assert len(record_masters) == 3  # the records are spread over every master
                print(f"partitions: registrations {dict(expected)}, partition -> master {masters}")
                print(f"records per master: {dict(record_masters)}")
                # A feature server's heartbeat: its member in `<cluster>:active-fs` (a slot of its own) when the
                # answer, counting it, arrives.
                server = await Peer.bind("127.0.0.20")
                try:
                    answer = await server.options(
                        sidecar.udp_port, X_FS_Status="open", X_FS_Calls="0", X_FS_ServiceUrl="http://127.0.0.1:3000"
                    )
                    assert answer.get("x-members") == "1", answer
                    assert client.smembers(f"{cluster_id}:active-fs") == {server.member.encode()}
                finally:
                    server.close()

                # 2. The master of partition 0 is killed and started again while every phone refreshes.
                async def restart() -> float:
                    await asyncio.sleep(RESTART_AFTER_S)
                    victim.stop(kill=True)
                    killed = time.monotonic()
                    await asyncio.sleep(DOWN_FOR_S)
                    await asyncio.to_thread(victim.start)
                    await asyncio.to_thread(redis_cluster.wait_ok)
                    return time.monotonic() - killed

                refresh, down_s = await asyncio.gather(
                    Fleet.round(phones, RATE_PER_S / 2, transactions_each=1), restart()
                )
                failures = failures_of(refresh)
                print(f"restart round: {refresh.as_dict()}, master down and back ok in {down_s:.2f} s")
                # Every phone got an answer: 200 (cached, or in full), or a 500 while its partition or its record
                # was on the master that was down; never no answer at all.
                assert refresh.cached + refresh.full + sum(failures.values()) == PHONES
                assert set(failures) <= {"first answer 500", "second answer 500"}, failures
                assert "timeout" not in failures

                # 3. Once the master is back, every phone refreshes again and is answered 200.
                deadline = time.monotonic() + 20
                while True:
                    again = await Fleet.round(phones, RATE_PER_S, transactions_each=1)
                    if not again.failures or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.5)
                assert not again.failures and again.cached + again.full == PHONES, again.as_dict()
                for phone in phones:
                    record = client.get(f"user:{phone.user}@{tenant.realm}")
                    assert record is not None and str(phone.local_port) in json.loads(record)["contact"]
                print(f"after the restart: {again.as_dict()}")

            # 4. `history`, `events tail` and `replay` on the cluster, from another process.
            cli_env = {**base_env(cluster_id, database.name), **env}
            aor = f"{phones[0].user}@{tenant.realm}"
            history = sidecar_cli(cli_env, "history", aor)
            assert history.returncode == 0, history.stderr
            assert "200 OK: registered" in history.stdout
            assert f"REGISTER via {sidecar.settings.ingest_id}" in history.stdout
            print(history.stdout)
            # every partition's facts, merged in time order; it stops at the limit
            ingest_id = sidecar.settings.ingest_id
            tail = sidecar_cli(
                cli_env,
                *("events", "tail", "--from-start", "--type", "RegistrationGranted"),
                *("--sbc", ingest_id, "--limit", str(PHONES)),
            )
            assert tail.returncode == 0, tail.stderr
            granted = [line for line in tail.stdout.splitlines() if " RegistrationGranted " in line]
            assert len(granted) == PHONES
            assert len({line.split(" aor=")[1].split()[0] for line in granted}) == PHONES
            # `replay` rebuilds lost records (in the slots of their own) from every partition's snapshot and facts.
            lost = [f"user:{phone.user}@{tenant.realm}" for phone in phones[:12]]
            before = {key: (client.get(key), client.zscore("active-user", key)) for key in lost}
            for key in lost:
                client.delete(key)
                client.zrem("active-user", key)
            replay = sidecar_cli(cli_env, "replay", "registrations")
            assert replay.returncode == 0, replay.stderr
            assert f"; {PHONES} live bindings restored" in replay.stdout, replay.stdout
            assert {key: (client.get(key), client.zscore("active-user", key)) for key in lost} == before
            print(replay.stdout)
        finally:
            await stop_sidecar(sidecar)
            client.close()
            await database.drop()
