"""Gateway OPTIONS ping end to end: sipp plays a carrier gateway that answers 200, then 503, then nothing.

The pinger reads the gateway from MariaDB every SEND_OPTIONS_PING_INTERVAL, the native front sends the OPTIONS,
and at each step the test checks `blacklist-sip-gateway:<sid>` (and its TTL) in Redis, `send_options_ping` in
MariaDB (OPTIONS_RESPONSE_REMOVE=503) and the alerts in InfluxDB.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
import aiomysql
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from events import GatewayPingFailed, GatewayPingSucceeded, default_codec
from tests.conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER, free_port
from tests.e2e.conftest import Sidecar, run_sipp, start_sidecar, stop_sidecar

INFLUX = "http://127.0.0.1:8086"
INTERVAL_S = 2
TTL_S = 5
T = TypeVar("T")


@dataclass
class Gateway:
    carrier_sid: str
    gateway_sid: str
    account_sid: str
    service_provider_sid: str
    name: str
    port: int


async def execute(database: str, sql: str, args: tuple[object, ...]) -> list[dict[str, object]]:
    connection = await aiomysql.connect(
        host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD, db=database, autocommit=True
    )
    try:
        async with connection.cursor(aiomysql.DictCursor) as cursor:
            await cursor.execute(sql, args)
            return list(await cursor.fetchall())
    finally:
        connection.close()


async def seed_gateway(database: str, port: int, cluster_id: str) -> Gateway:
    gateway = Gateway(
        str(uuid.uuid4()), str(uuid.uuid4()), f"acct-{cluster_id}", f"sp-{cluster_id}", f"Pinged {cluster_id}", port
    )
    await execute(
        database,
        "INSERT INTO voip_carriers (voip_carrier_sid, name, account_sid, service_provider_sid, is_active)"
        " VALUES (%s, %s, %s, %s, 1)",
        (gateway.carrier_sid, gateway.name, gateway.account_sid, gateway.service_provider_sid),
    )
    await execute(
        database,
        "INSERT INTO sip_gateways (sip_gateway_sid, voip_carrier_sid, ipv4, port, inbound, outbound, is_active,"
        " protocol, send_options_ping) VALUES (%s, %s, '127.0.0.1', %s, 1, 1, 1, 'udp', 1)",
        (gateway.gateway_sid, gateway.carrier_sid, port),
    )
    return gateway


async def send_options_ping(database: str, gateway: Gateway) -> int:
    rows = await execute(
        database, "SELECT send_options_ping FROM sip_gateways WHERE sip_gateway_sid = %s", (gateway.gateway_sid,)
    )
    return int(str(rows[0]["send_options_ping"]))


async def alerts(account_sid: str) -> list[dict[str, object]]:
    query = f"SELECT * FROM alerts WHERE account_sid = '{account_sid}'"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{INFLUX}/query", params={"db": "alerts", "q": query}) as response:
            body = await response.json()
    series = body["results"][0].get("series", [])
    if not series:
        return []
    columns = series[0]["columns"]
    return [dict(zip(columns, row, strict=True)) for row in series[0]["values"]]


async def eventually(check: Callable[[], Awaitable[T]], timeout_s: float = 10.0, every_s: float = 0.05) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every_s)


async def metric(sidecar: Sidecar, name: str) -> float | None:
    """One sample of the service's /metrics, by its full name (no labels)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{sidecar.http_port}/metrics") as response:
            text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    return None


async def test_gateway_answering_200_then_503_then_nothing(
    cluster_id: str, mysql_db: str, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    gateway = await seed_gateway(mysql_db, port, cluster_id)
    key = f"blacklist-sip-gateway:{gateway.gateway_sid}"
    label = f"127.0.0.1:{port};transport=udp"
    await redis.set(key, 1, ex=60)  # blacklisted earlier: the 200 clears it
    sipp = asyncio.create_task(
        run_sipp("uas-gateway-options.xml", free_port(), calls=3, extra=["-p", str(port)], timeout_s=60)
    )
    await asyncio.sleep(0.3)
    env = {
        "SEND_OPTIONS_PING_INTERVAL": str(INTERVAL_S),
        "OPTIONS_PING_TTL": str(TTL_S),
        "OPTIONS_RESPONSE_REMOVE": "503",
        "JAMBONES_TIME_SERIES_HOST": "127.0.0.1",
    }
    sidecar = await start_sidecar(cluster_id, mysql_db, env=env)
    report: list[str] = []
    try:
        # 200 OK: the blacklist key is deleted, the gateway stays pinged, nothing is alerted.
        started = time.monotonic()

        async def cleared() -> bool:
            return not await redis.exists(key)

        await eventually(cleared, timeout_s=INTERVAL_S + 3)
        assert time.monotonic() - started >= INTERVAL_S - 0.5  # the first round is one interval after start
        assert await send_options_ping(mysql_db, gateway) == 1

        assert await alerts(gateway.account_sid) == []
        report.append(f"200: {key} absent; send_options_ping=1; alerts: none")

        # /metrics: the pinged gateways by state at each round's start (the next round: reachable again).
        async def reachable() -> bool:
            return await metric(sidecar, "sbc_sidecar_pinger_gateways_reachable") == 1

        await eventually(reachable, timeout_s=INTERVAL_S + 3)
        assert await metric(sidecar, "sbc_sidecar_pinger_gateways_blacklisted") == 0

        # 503: blacklisted for OPTIONS_PING_TTL, pinging disabled (OPTIONS_RESPONSE_REMOVE), both alerts.
        async def blacklisted() -> bool:
            return bool(await redis.exists(key))

        await eventually(blacklisted, timeout_s=INTERVAL_S + 3)
        ttl = await redis.ttl(key)
        assert 0 < ttl <= TTL_S, ttl
        assert await redis.get(key) == b"1"

        async def disabled() -> bool:
            return await send_options_ping(mysql_db, gateway) == 0

        await eventually(disabled)
        failed = f"Options ping {label} unsuccessfully, received: 503"
        disabling = f"Disabling Options ping for 127.0.0.1 in carrier {gateway.name}:{gateway.carrier_sid} due to 503"

        async def two_alerts() -> list[dict[str, object]]:
            rows = await alerts(gateway.account_sid)
            return rows if len(rows) >= 2 else []

        rows = await eventually(two_alerts)
        assert sorted(str(r["message"]) for r in rows) == sorted([failed, disabling])
        assert all(r["service_provider_sid"] == gateway.service_provider_sid for r in rows)
        assert all(r.get("alert_type") is None for r in rows)
        report.append(f"503: {key}=1 ttl={ttl}s; send_options_ping=0; alerts: {failed!r}, {disabling!r}")

        # Disabled: no more pings; the key is not refreshed and lapses after its TTL.
        commands = await redis.xlen(sidecar.names.commands)
        await eventually(cleared, timeout_s=TTL_S + 2, every_s=0.2)
        assert await redis.xlen(sidecar.names.commands) == commands
        report.append(f"disabled: no OPTIONS for {TTL_S}s, {key} lapsed")

        # Pinging re-enabled, the gateway answers nothing: a 408 after the timeout blacklists it again, with
        # an alert; 408 is not an OPTIONS_RESPONSE_REMOVE code, so the gateway stays pinged.
        await execute(
            mysql_db, "UPDATE sip_gateways SET send_options_ping = 1 WHERE sip_gateway_sid = %s", (gateway.gateway_sid,)
        )
        await eventually(blacklisted, timeout_s=2 * INTERVAL_S + 3)
        ttl = await redis.ttl(key)
        assert 0 < ttl <= TTL_S, ttl
        timeout = f"Options ping {label} unsuccessfully, received: 408"

        async def timeout_alert() -> bool:
            return timeout in {str(r["message"]) for r in await alerts(gateway.account_sid)}

        await eventually(timeout_alert)
        assert await send_options_ping(mysql_db, gateway) == 1

        async def counted_blacklisted() -> bool:
            return await metric(sidecar, "sbc_sidecar_pinger_gateways_blacklisted") == 1

        await eventually(counted_blacklisted, timeout_s=INTERVAL_S + 3)
        assert await metric(sidecar, "sbc_sidecar_pinger_gateways_reachable") == 0
        report.append(f"nothing: {key}=1 ttl={ttl}s; send_options_ping=1; alert: {timeout!r}")

        result = await asyncio.wait_for(sipp, 30)
        assert result.returncode == 0, result.stderr + result.messages[-3000:]
        assert result.messages.count("OPTIONS sip:127.0.0.1:") >= 3
        first = result.messages[result.messages.index("OPTIONS sip:") :].split("\n\n", 1)[0]
        assert f"OPTIONS sip:127.0.0.1:{port} SIP/2.0" in first
        assert f"SIP/2.0/UDP 127.0.0.1:{sidecar.udp_port};branch=z9hG4bK" in first

        codec = default_codec()
        facts = [codec.decode(f) for _, f in await redis.xrange(sidecar.names.carriers)]
        succeeded = [f for f in facts if isinstance(f, GatewayPingSucceeded)]
        failures = [f for f in facts if isinstance(f, GatewayPingFailed)]
        assert succeeded[0].cleared and succeeded[0].edge_id == sidecar.settings.ingest_id
        assert [f.status for f in failures if f.blacklisted] == [503, 408]
        with capsys.disabled():
            print("\n--- gateway pinged by sbc-sidecar: 200, then 503, then nothing ---")
            print("\n".join(report))
            print("--- sipp (gateway) transcript ---\n" + result.messages[:4000])
    finally:
        await stop_sidecar(sidecar)
        await redis.delete(key)
        if not sipp.done():
            sipp.cancel()
