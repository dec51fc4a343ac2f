"""Registration stats as InfluxDB time series (projections/stats.py), checked with queries against the real
InfluxDB 1.x on loopback."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import aiohttp
from redis.asyncio import Redis

from events import (
    RegisterChallenged,
    RegisterRejected,
    RegistrationExpired,
    RegistrationGranted,
    RegistrationRefreshed,
    StreamNames,
    stamp,
)
from projections.stats import DATABASE, RegistrationGauges, StatsProjection, count_users, stats_line
from projections.timeseries import InfluxV1Writer
from runtime.handling import Delivery, Outcome
from runtime.metrics import Metrics

INFLUX = "http://127.0.0.1:8086"


async def query(session: aiohttp.ClientSession, text: str) -> list[dict[str, object]]:
    async with session.get(f"{INFLUX}/query", params={"db": DATABASE, "q": text}) as response:
        body = await response.json()
    rows: list[dict[str, object]] = []
    for series in body["results"][0].get("series", []):
        for values in series["values"]:
            rows.append({**series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))})
    return rows


def granted(aor: str, account_sid: str) -> RegistrationGranted:
    return RegistrationGranted(
        **stamp(),
        aor=aor,
        contact=f"sip:{aor}",
        sbc_address="udp/203.0.113.1:5060",
        proxy="sip:127.0.0.1:5070",
        granted_expires_s=60,
        advertised_expires_s=30,
        expiry_time_ms=int(time.time() * 1000) + 60_000,
        account_sid=account_sid,
        source_ip="127.0.0.1",
        source_port=5070,
        call_id="c1",
    )


def test_a_line_per_outcome_with_its_tags() -> None:
    line = stats_line(granted("alice@example.com", "acct 1"))
    assert line is not None
    assert line.startswith("registrations,outcome=granted,account_sid=acct\\ 1,realm=example.com count=1i ")
    challenged = RegisterChallenged(
        **stamp(), aor="a@r.example", realm="r.example", nonce="n", source_ip="1.2.3.4", source_port=1, call_id="c"
    )
    assert (stats_line(challenged) or "").startswith("registrations,outcome=challenged,realm=r.example count=1i ")
    assert count_users([b"user:alice@a.example", b"user:alice@b.example", b"user:bob@a.example"]) == (
        2,
        {"a.example": 2, "b.example": 1},
    )


async def test_outcomes_per_account_reach_influxdb_once(cluster_id: str) -> None:
    account = f"acct-{cluster_id}"
    realm = f"{cluster_id}.example"
    aor = f"alice@{realm}"
    events = [
        RegisterChallenged(**stamp(), aor=aor, realm=realm, nonce="n", source_ip="1.2.3.4", source_port=1, call_id="c"),
        granted(aor, account),
        granted(f"bob@{realm}", account),
        RegisterRejected(
            **stamp(),
            aor=aor,
            status=403,
            reason="Forbidden",
            cause="webhook status 'fail'",
            source_ip="1.2.3.4",
            source_port=1,
            call_id="c",
            account_sid=account,
        ),
        RegistrationRefreshed(
            **stamp(),
            aor=aor,
            advertised_expires_s=30,
            expiry_time_ms=0,
            source_ip="1.2.3.4",
            source_port=1,
            call_id="c",
        ),
        RegistrationExpired(**stamp(), aor=aor, expiry_time_ms=0, granted_event_id="g"),
    ]
    deliveries = [Delivery("s", f"1-{i}", e) for i, e in enumerate(events)]
    async with aiohttp.ClientSession() as session:
        projection = StatsProjection(InfluxV1Writer(session, INFLUX))
        assert all(isinstance(r, Outcome) for r in await projection.handle(deliveries))
        await projection.handle(deliveries)  # re-delivered: the same points again, not new ones
        per_outcome = await query(
            session, f"SELECT sum(count) FROM registrations WHERE realm = '{realm}' GROUP BY outcome"
        )
        per_account = await query(
            session, f"SELECT sum(count) FROM registrations WHERE account_sid = '{account}' GROUP BY outcome"
        )
    assert {row["outcome"]: row["sum"] for row in per_outcome} == {
        "challenged": 1,
        "granted": 2,
        "failed": 1,
        "refreshed": 1,
        "expired": 1,
    }
    assert {row["outcome"]: row["sum"] for row in per_account} == {"granted": 2, "failed": 1}


async def test_active_registrations_are_a_time_series(redis: Redis, cluster_id: str) -> None:
    realm = f"{cluster_id}.example"
    members = {f"user:{user}@{realm}": (time.time() + 60) * 1000 for user in ("alice", "bob", "carol")}
    await redis.zadd("active-user", members)
    try:
        async with aiohttp.ClientSession() as session:
            metrics = Metrics()
            gauges = RegistrationGauges(redis, StreamNames(cluster_id), metrics, InfluxV1Writer(session, INFLUX))
            await gauges.sample()
            rows = await query(session, f"SELECT count FROM registrations_active WHERE realm = '{realm}'")
        assert [row["count"] for row in rows] == [3]
        slot = datetime.fromisoformat(str(rows[0]["time"]).replace("Z", "+00:00"))
        assert slot.tzinfo == UTC and slot.second % 30 == 0  # one point per interval, whoever writes it
        assert metrics.active_registrations._value.get() >= 3  # noqa: SLF001 - the gauge's value
    finally:
        await redis.zrem("active-user", *members)
