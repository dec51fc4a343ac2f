"""InfluxDB alerts (SPEC 5.3) written by the alerts projection to a real InfluxDB 1.x on loopback."""

from __future__ import annotations

import aiohttp
import pytest

from events import DeviceLimitReached, WebhookFailed, stamp
from projections.alerts import AlertsProjection, line_of
from projections.timeseries import InfluxV1Writer
from runtime.handling import Delivery, Outcome

INFLUX = "http://127.0.0.1:8086"


async def alert_rows(session: aiohttp.ClientSession, account_sid: str) -> list[dict[str, object]]:
    query = f"SELECT * FROM alerts WHERE account_sid = '{account_sid}'"
    async with session.get(f"{INFLUX}/query", params={"db": "alerts", "q": query}) as response:
        body = await response.json()
    series = body["results"][0].get("series", [])
    if not series:
        return []
    columns = series[0]["columns"]
    return [dict(zip(columns, row, strict=True)) for row in series[0]["values"]]


def test_line_protocol_escapes_tags_and_quotes_messages() -> None:
    event = WebhookFailed(**stamp(), account_sid="a b,c", url='http://h/"x"', status=404)
    line = line_of(event)
    assert line is not None
    assert line.startswith("alerts,alert_type=webhook-failure,account_sid=a\\ b\\,c message=")
    assert 'message="http://h/\\"x\\" returned 404"' in line


async def test_alerts_reach_influxdb_once_per_event(cluster_id: str) -> None:
    account = f"acct-{cluster_id}"
    events = [
        DeviceLimitReached(**stamp(), account_sid=account, limit=2, service_provider_sid="sp-1"),
        WebhookFailed(**stamp(), account_sid=account, url="http://127.0.0.1:4000/auth", status=503),
        WebhookFailed(**stamp(), account_sid=account, url="http://127.0.0.1:4000/auth", status=None),
    ]
    deliveries = [Delivery("s", f"1-{i}", e) for i, e in enumerate(events)]
    async with aiohttp.ClientSession() as session:
        projection = AlertsProjection(InfluxV1Writer(session, INFLUX))
        results = await projection.handle(deliveries)
        assert all(isinstance(r, Outcome) for r in results)
        await projection.handle(deliveries)  # re-delivered: the same points, not new ones
        rows = await alert_rows(session, account)
    assert len(rows) == 3
    by_type = {row["alert_type"]: row for row in rows}
    assert by_type["account-device-limit"]["message"] == (
        "you have exceeded your account limit of 2 registered devices; please consider upgrading your plan"
    )
    assert by_type["account-device-limit"]["service_provider_sid"] == "sp-1"
    assert by_type["webhook-failure"]["message"] == "http://127.0.0.1:4000/auth returned 503"
    assert by_type["webhook-connection-failure"]["message"] == "failed to connect to http://127.0.0.1:4000/auth"


@pytest.mark.parametrize("url", ["http://127.0.0.1:1"])
async def test_unreachable_influxdb_leaves_the_batch_for_retry(url: str) -> None:
    event = WebhookFailed(**stamp(), account_sid="x", url="http://h", status=500)
    async with aiohttp.ClientSession() as session:
        results = await AlertsProjection(InfluxV1Writer(session, url, timeout_s=1)).handle(
            [Delivery("s", "1-0", event)]
        )
    assert isinstance(results[0], BaseException)
