"""The InfluxDB 2.x writer (projections/timeseries.py, influxdb-client's async write API).

No InfluxDB 2.x server can be installed on the test machines (Debian has 1.6.7 only, and no package registry
reachable here ships `influxd` 2.x), so the 2.x side is `InfluxV2Front`: a real HTTP server in the test
answering `POST /api/v2/write` as InfluxDB 2.x does (token, org, bucket, precision; 204, 401, 404, 400, 503)
and storing what it accepts in the real InfluxDB 1.x on loopback, in the database behind the bucket, so the
points are checked with queries. It also answers the v1 `/query` and `/write`, recording only, so the bodies
of the two writers can be compared.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from events import DeviceLimitReached, Event, StreamNames, WebhookFailed, stamp
from projections.alerts import AlertsProjection, line_of
from projections.stats import StatsProjection, stats_line
from projections.timeseries import (
    InfluxV1Writer,
    InfluxV2Writer,
    TimeSeriesUnavailable,
    TimeSeriesWriter,
    open_time_series,
)
from runtime.eventlog import EventLog
from runtime.handling import Delivery, Outcome
from runtime.settings import Settings
from tests.conftest import base_env, free_port
from tests.e2e.conftest import start_sidecar, stop_sidecar
from tests.integration.test_registration_stats import granted

INFLUX_1X = "http://127.0.0.1:8086"
ORG = "jambonz"
V1_PRECISION = {"ns": "ns", "us": "u", "ms": "ms", "s": "s"}


@dataclass
class Received:
    path: str
    query: dict[str, str]
    authorization: str | None
    content_type: str | None
    body: bytes


@dataclass
class InfluxV2Front:
    """InfluxDB 2.x's write endpoint over the real InfluxDB 1.x: bucket name → 1.x database."""

    token: str
    buckets: dict[str, str]
    org: str = ORG
    received: list[Received] = field(default_factory=list)
    unavailable: bool = False
    delay_s: float = 0.0
    url: str = ""
    storage: aiohttp.ClientSession | None = None
    _accepted: dict[str, asyncio.Event] = field(default_factory=dict)

    def accepted_in(self, bucket: str) -> asyncio.Event:
        """Set once a write to `bucket` has been stored."""
        return self._accepted.setdefault(bucket, asyncio.Event())

    def writes(self, path: str = "/api/v2/write") -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def _record(self, request: web.Request) -> Received:
        received = Received(
            request.path,
            dict(request.query),
            request.headers.get("Authorization"),
            request.headers.get("Content-Type"),
            await request.read(),
        )
        self.received.append(received)
        return received

    async def v2_write(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.unavailable:
            return web.json_response({"code": "unavailable", "message": "service unavailable"}, status=503)
        if received.authorization != f"Token {self.token}":
            return web.json_response({"code": "unauthorized", "message": "unauthorized access"}, status=401)
        org, bucket = received.query.get("org"), received.query.get("bucket", "")
        if org != self.org:
            return web.json_response(
                {"code": "not found", "message": f'organization name "{org}" not found'}, status=404
            )
        database = self.buckets.get(bucket)
        if database is None:
            return web.json_response({"code": "not found", "message": f'bucket "{bucket}" not found'}, status=404)
        precision = received.query.get("precision", "ns")
        if precision not in V1_PRECISION:
            return web.json_response({"code": "invalid", "message": f"invalid precision {precision!r}"}, status=400)
        assert self.storage is not None
        async with self.storage.post(
            f"{INFLUX_1X}/write", params={"db": database, "precision": V1_PRECISION[precision]}, data=received.body
        ) as stored:
            if stored.status != 204:
                return web.json_response({"code": "invalid", "message": await stored.text()}, status=400)
        self.accepted_in(bucket).set()
        return web.Response(status=204)

    async def v1_query(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return web.json_response({"results": [{"statement_id": 0}]})

    async def v1_write(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return web.Response(status=204)


@asynccontextmanager
async def v2_front(token: str, buckets: dict[str, str]) -> AsyncIterator[InfluxV2Front]:
    front = InfluxV2Front(token, buckets)
    app = web.Application()
    app.router.add_post("/api/v2/write", front.v2_write)
    app.router.add_post("/query", front.v1_query)
    app.router.add_post("/write", front.v1_write)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    front.url = f"http://{host}:{port}"
    async with aiohttp.ClientSession() as storage:
        front.storage = storage
        for database in set(buckets.values()):
            async with storage.post(f"{INFLUX_1X}/query", params={"q": f'CREATE DATABASE "{database}"'}) as r:
                assert r.status == 200
        try:
            yield front
        finally:
            await runner.cleanup()


def v2_settings(url: str, token: str, **extra: str) -> Settings:
    env = {
        **base_env("unused", "unused"),
        "JAMBONES_TIME_SERIES_HOST": url,
        "SIDECAR_TIME_SERIES_TOKEN": token,
        "SIDECAR_TIME_SERIES_ORG": ORG,
        **extra,
    }
    return Settings.from_env(env)


async def rows(database: str, text: str) -> list[dict[str, object]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{INFLUX_1X}/query", params={"db": database, "q": text}) as response:
            body = await response.json()
    found: list[dict[str, object]] = []
    for series in body["results"][0].get("series", []):
        for values in series["values"]:
            found.append({**series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))})
    return found


def alert_events(account: str) -> list[DeviceLimitReached | WebhookFailed]:
    return [
        DeviceLimitReached(**stamp(), account_sid=account, limit=2, service_provider_sid="sp-1"),
        WebhookFailed(**stamp(), account_sid=account, url='http://127.0.0.1:4000/a "b", c', status=503),
    ]


def deliveries_of(events: Sequence[Event]) -> list[Delivery]:
    return [Delivery("s", f"1-{i}", event) for i, event in enumerate(events)]


async def test_alerts_and_stats_reach_buckets_of_their_database_names(cluster_id: str) -> None:
    token = secrets.token_hex(16)
    account = f"acct-{cluster_id}"
    realm = f"{cluster_id}.example"
    alerts = alert_events(account)
    registrations = [granted(f"alice@{realm}", account), granted(f"bob@{realm}", account)]
    async with v2_front(token, {"alerts": "alerts", "sbc_sidecar": "sbc_sidecar"}) as front:
        async with open_time_series(v2_settings(front.url, token), None) as writer:
            assert isinstance(writer, InfluxV2Writer)
            results = [
                *await AlertsProjection(writer).handle(deliveries_of(alerts)),
                *await StatsProjection(writer).handle(deliveries_of(registrations)),
            ]
        assert all(isinstance(result, Outcome) for result in results)
        writes = front.writes()
    assert [(w.query["bucket"], w.query["org"], w.query["precision"]) for w in writes] == [
        ("alerts", ORG, "ns"),
        ("sbc_sidecar", ORG, "ns"),
    ]
    assert all(w.authorization == f"Token {token}" for w in writes)
    assert all((w.content_type or "").startswith("text/plain") for w in writes)
    assert writes[0].body == "\n".join(line_of(e) or "" for e in alerts).encode()
    assert writes[1].body == "\n".join(stats_line(e) or "" for e in registrations).encode()
    stored_alerts = await rows("alerts", f"SELECT * FROM alerts WHERE account_sid = '{account}'")
    assert {row["alert_type"]: row["message"] for row in stored_alerts} == {
        "account-device-limit": (
            "you have exceeded your account limit of 2 registered devices; please consider upgrading your plan"
        ),
        "webhook-failure": 'http://127.0.0.1:4000/a "b", c returned 503',
    }
    stored_stats = await rows(
        "sbc_sidecar", f"SELECT sum(count) FROM registrations WHERE realm = '{realm}' GROUP BY outcome"
    )
    assert {row["outcome"]: row["sum"] for row in stored_stats} == {"granted": 2}


async def test_buckets_named_by_settings(cluster_id: str) -> None:
    token = secrets.token_hex(16)
    account = f"acct-{cluster_id}"
    buckets = {"sidecar-alerts": "alerts", "sidecar-stats": "sbc_sidecar"}
    env = {"SIDECAR_TIME_SERIES_ALERTS_BUCKET": "sidecar-alerts", "SIDECAR_TIME_SERIES_STATS_BUCKET": "sidecar-stats"}
    async with v2_front(token, buckets) as front:
        async with open_time_series(v2_settings(front.url, token, **env), None) as writer:
            assert writer is not None
            alerts = await AlertsProjection(writer).handle(deliveries_of(alert_events(account)))
            stats = await StatsProjection(writer).handle(deliveries_of([granted(f"a@{cluster_id}.example", account)]))
            with pytest.raises(TimeSeriesUnavailable, match="404 bucket=elsewhere"):
                await writer.write("elsewhere", ["m v=1i 1"])  # no setting names it: the bucket of its name
        assert [w.query["bucket"] for w in front.writes()] == ["sidecar-alerts", "sidecar-stats", "elsewhere"]
    assert all(isinstance(result, Outcome) for result in [*alerts, *stats])
    assert len(await rows("alerts", f"SELECT * FROM alerts WHERE account_sid = '{account}'")) == 2


async def test_the_2x_writer_sends_what_the_v1_writer_sends(cluster_id: str) -> None:
    token = secrets.token_hex(16)
    account = f"acct {cluster_id},é=1"
    events = [
        *alert_events(account),
        WebhookFailed(**stamp(), account_sid="a\\b", url="http://h/ü", status=None),
    ]
    lines = [text for text in (line_of(e) for e in events) if text]
    async with v2_front(token, {"alerts": "alerts"}) as front:
        async with aiohttp.ClientSession() as session:
            await InfluxV1Writer(session, front.url).write("alerts", lines)
        async with open_time_series(v2_settings(front.url, token), None) as writer:
            assert writer is not None
            await writer.write("alerts", lines)
        v1 = front.writes("/write")
        v2 = front.writes()
    assert len(v1) == len(v2) == 1
    assert v2[0].body == v1[0].body == "\n".join(lines).encode()
    assert (v1[0].query["db"], v1[0].query["precision"]) == (v2[0].query["bucket"], v2[0].query["precision"])
    stored = await rows("alerts", f"SELECT * FROM alerts WHERE account_sid = '{account}'")  # the 2.x write only
    assert {row["alert_type"] for row in stored} == {"account-device-limit", "webhook-failure"}


@asynccontextmanager
async def refusing(case: str, token: str) -> AsyncIterator[tuple[TimeSeriesWriter, str]]:
    """A writer facing one way InfluxDB 2.x can fail, and the status its error should name."""
    if case == "refused":
        settings = v2_settings(f"http://127.0.0.1:{free_port()}", token)  # nothing listens there
        async with open_time_series(settings, None) as writer:
            assert writer is not None
            yield writer, "ClientConnectorError"
        return
    async with v2_front(token, {"alerts": "alerts"} if case != "unknown bucket" else {}) as front:
        if case == "unavailable":
            front.unavailable = True
        if case == "slow":
            front.delay_s = 1.0
            assert front.url
            settings = v2_settings(front.url, token)
            assert settings.influx_v2 is not None
            async with InfluxV2Writer(front.url, settings.influx_v2, {}, timeout_s=0.2) as slow:
                yield slow, "TimeoutError"
            return
        wrong = secrets.token_hex(16) if case == "bad token" else token
        async with open_time_series(v2_settings(front.url, wrong), None) as writer:
            assert writer is not None
            yield writer, {"bad token": "401", "unknown bucket": "404", "unavailable": "503"}[case]


@pytest.mark.parametrize("case", ["bad token", "unknown bucket", "unavailable", "refused", "slow"])
async def test_a_refusal_or_no_answer_leaves_the_points_for_retry(
    case: str, cluster_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = secrets.token_hex(16)
    events = alert_events(f"acct-{cluster_id}")
    async with refusing(case, token) as (writer, named):
        with pytest.raises(TimeSeriesUnavailable) as raised:
            await writer.write("alerts", [line_of(e) or "" for e in events])
        results = await AlertsProjection(writer).handle(deliveries_of(events))
    assert named in str(raised.value)
    assert all(isinstance(result, TimeSeriesUnavailable) for result in results)  # not acked: delivered again
    assert token not in str(raised.value) and token not in caplog.text
    assert "alerts not written, will retry" in caplog.text


async def test_a_running_sidecar_writes_its_alerts_to_influxdb_2x(
    cluster_id: str, mysql_db: str, redis: Redis, eventlog: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    token = secrets.token_hex(16)
    account = f"acct-{cluster_id}"
    async with v2_front(token, {"alerts": "alerts", "sbc_sidecar": "sbc_sidecar"}) as front:
        env = {"JAMBONES_TIME_SERIES_HOST": front.url, "SIDECAR_TIME_SERIES_TOKEN": token}
        env["SIDECAR_TIME_SERIES_ORG"] = ORG
        sidecar = await start_sidecar(cluster_id, mysql_db, env=env, roles=("projections",))
        try:
            event = WebhookFailed(**stamp(), account_sid=account, url="http://127.0.0.1:4000/auth", status=500)
            await eventlog.append(StreamNames(cluster_id).registrations, [event])
            await asyncio.wait_for(front.accepted_in("alerts").wait(), 10)
        finally:
            await stop_sidecar(sidecar)
        alert_write = next(w for w in front.writes() if w.query.get("bucket") == "alerts")
    assert alert_write.body == (line_of(event) or "").encode()
    assert alert_write.authorization == f"Token {token}"
    stored = await rows("alerts", f"SELECT * FROM alerts WHERE account_sid = '{account}'")
    assert [row["message"] for row in stored] == ["http://127.0.0.1:4000/auth returned 500"]
    assert "time series to influxdb 2.x" in caplog.text
    assert "buckets=alerts->alerts,sbc_sidecar->sbc_sidecar" in caplog.text
    assert token not in caplog.text
