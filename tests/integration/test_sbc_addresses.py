"""sbc_addresses (SPEC 1.2, 5.4): two services with different public addresses keep a row each alive, and a
dead SBC's row is cleaned; the rows come from the front's hostport string."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

import aiomysql
import pytest

from processors.sbc_addresses import SbcAddressKeeper, sbc_address_records
from tests.conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER
from tests.e2e.conftest import start_sidecar, stop_sidecar

Row = tuple[str, int, int | None, int | None, datetime | None]


@pytest.fixture
async def pool(mysql_db: str) -> AsyncIterator[aiomysql.Pool]:
    created = await aiomysql.create_pool(
        host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD, db=mysql_db, autocommit=True
    )
    try:
        yield created
    finally:
        created.close()
        await created.wait_closed()


async def rows(pool: aiomysql.Pool) -> list[Row]:
    async with pool.acquire() as connection, connection.cursor() as cursor:
        await cursor.execute("SELECT ipv4, port, tls_port, wss_port, last_updated FROM sbc_addresses ORDER BY ipv4")
        return list(await cursor.fetchall())


async def wait_rows(pool: aiomysql.Pool, count: int) -> list[Row]:
    for _ in range(100):
        found = await rows(pool)
        if len(found) == count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} sbc_addresses rows, got {await rows(pool)}")


def test_records_from_a_hostport_keep_public_addresses_only() -> None:
    hostport = (
        "udp/3.1.2.3:5060,tcp/3.1.2.3:5060,tls/3.1.2.3:5061,wss/3.1.2.3:8443,udp/10.0.0.5:5060,udp/127.0.0.1:5070"
    )
    [record] = sbc_address_records(hostport)
    assert (record.ipv4, record.port, record.tls_port, record.wss_port) == ("3.1.2.3", 5060, 5061, 8443)
    assert sbc_address_records("") == []


async def test_two_services_keep_a_row_each_and_a_dead_one_is_cleaned(
    cluster_id: str, mysql_db: str, pool: aiomysql.Pool
) -> None:
    async with pool.acquire() as connection, connection.cursor() as cursor:
        await cursor.execute(
            "INSERT INTO sbc_addresses (sbc_address_sid, ipv4, port, last_updated) "
            "VALUES ('dead-sbc', '198.51.100.9', 5060, NOW() - INTERVAL 2 HOUR)"
        )
    env = {"SBC_PUBLIC_ADDRESS_KEEP_ALIVE_IN_MILISECOND": "300", "DEAD_SBC_IN_SECOND": "3600"}
    first = await start_sidecar(cluster_id, mysql_db, env={**env, "SIDECAR_SIP_PUBLIC_ADDRESS": "203.0.113.1"})
    second = await start_sidecar(
        cluster_id,
        mysql_db,
        env={**env, "SIDECAR_SIP_PUBLIC_ADDRESS": "203.0.113.2"},
        roles=("ingest",),  # an SBC edge alone: it writes through a pool of its own
    )
    try:
        found = await wait_rows(pool, 2)  # the dead SBC's row is gone, each service has its own
        assert [(ip, port) for ip, port, *_ in found] == [
            ("203.0.113.1", first.udp_port),
            ("203.0.113.2", second.udp_port),
        ]
        # Really periodic: last_updated moves on while the services run (MySQL DATETIME has whole seconds).
        stamps = {ip: updated for ip, *_, updated in found}
        await asyncio.sleep(1.3)
        later = {ip: updated for ip, *_, updated in await rows(pool)}
        assert all(later[ip] > stamps[ip] for ip in stamps), (stamps, later)
        print("sbc_addresses rows of two services:", *await rows(pool), sep="\n  ")
    finally:
        await stop_sidecar(second)
        await stop_sidecar(first)


async def test_a_row_not_kept_alive_is_cleaned_by_a_peer(pool: aiomysql.Pool) -> None:
    keeper = SbcAddressKeeper(pool, lambda: "udp/203.0.113.7:5060", keep_alive_ms=60_000, dead_sbc_s=1)
    assert await keeper.keep_alive(sbc_address_records("udp/203.0.113.7:5060"))
    async with pool.acquire() as connection, connection.cursor() as cursor:
        await cursor.execute(
            "INSERT INTO sbc_addresses (sbc_address_sid, ipv4, port, last_updated) "
            "VALUES ('gone', '198.51.100.8', 5060, NULL)"
        )
    await asyncio.sleep(2.1)  # the first row is now older than DEAD_SBC_IN_SECOND too
    assert await keeper.keep_alive(sbc_address_records("udp/203.0.113.7:5060"))
    assert [row[0] for row in await rows(pool)] == ["203.0.113.7"]  # written again, then the dead ones deleted
    assert keeper.cleaned == 1  # the row never updated; the live one was written just before
