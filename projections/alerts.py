"""The alerts projection: jambonz's InfluxDB alerts (SPEC 5.3) from registration facts.

Database and measurement `alerts`, tags `alert_type`, `account_sid`, `service_provider_sid`, field
`message`, written with the InfluxDB v1 `/write` line protocol (InfluxDB 1.6-1.8, and 2.x's v1 API).
Each point's timestamp is its event's `occurred_at` in nanoseconds, so a re-delivered event rewrites
the same point instead of adding one: InfluxDB keeps one point per series and timestamp.
The write happens before the consumer acks; a failed write leaves the batch pending to be retried.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import aiohttp

from events import DeviceLimitReached, Event, WebhookFailed
from events.streams import GROUP_ALERTS_PROJECTION
from runtime.consumer import Consumer
from runtime.handling import Delivery, Outcome
from runtime.services import Services, Worker

log = logging.getLogger(__name__)

DATABASE = "alerts"
MEASUREMENT = "alerts"


def _tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _field(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def alert_of(event: Event) -> tuple[str | None, dict[str, str | None], str] | None:
    """(alert_type, tags, message) of an event that is an alert, else None."""
    if isinstance(event, DeviceLimitReached):
        message = (
            f"you have exceeded your account limit of {event.limit} registered devices; "
            "please consider upgrading your plan"
        )
        return (
            "account-device-limit",
            {"account_sid": event.account_sid, "service_provider_sid": event.service_provider_sid},
            message,
        )
    if isinstance(event, WebhookFailed):
        tags = {"account_sid": event.account_sid, "service_provider_sid": event.service_provider_sid}
        if event.status is None:
            return "webhook-connection-failure", tags, f"failed to connect to {event.url}"
        return "webhook-failure", tags, f"{event.url} returned {event.status}"
    return None


def line_of(event: Event) -> str | None:
    alert = alert_of(event)
    if alert is None:
        return None
    alert_type, tags, message = alert
    parts = [MEASUREMENT]
    if alert_type:
        parts.append(f"alert_type={_tag(alert_type)}")
    parts += [f"{key}={_tag(value)}" for key, value in sorted(tags.items()) if value]
    timestamp_ns = int(event.occurred_at.timestamp() * 1_000_000) * 1000
    return f"{','.join(parts)} message={_field(message)} {timestamp_ns}"


class AlertsProjection:
    """A BatchHandler that writes a batch's alerts to InfluxDB in one request."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, timeout_s: float = 5.0) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._database_ready = False
        self.written = 0

    async def _ensure_database(self) -> None:
        if self._database_ready:
            return
        async with self.session.post(
            f"{self.base_url}/query", params={"q": f"CREATE DATABASE {DATABASE}"}, timeout=self.timeout
        ) as response:
            response.raise_for_status()
        self._database_ready = True

    async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome | BaseException]:
        lines = [line for line in (line_of(d.event) for d in deliveries) if line]
        if lines:
            try:
                await self._ensure_database()
                async with self.session.post(
                    f"{self.base_url}/write",
                    params={"db": DATABASE, "precision": "ns"},
                    data="\n".join(lines).encode(),
                    timeout=self.timeout,
                ) as response:
                    if response.status >= 300:
                        raise RuntimeError(f"influxdb answered {response.status}: {await response.text()}")
            except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
                log.warning("alerts not written, will retry count=%d error=%s", len(lines), exc)
                return [exc for _ in deliveries]
            self.written += len(lines)
        return [Outcome() for _ in deliveries]


def build(services: Services) -> list[Worker]:
    host = services.settings.time_series_host
    if not host or services.http is None:
        return []  # alerts are off without JAMBONES_TIME_SERIES_HOST
    base_url = host if host.startswith("http") else f"http://{host}:8086"
    projection = AlertsProjection(services.http, base_url)
    return [
        Consumer(
            services.eventlog,
            services.names.registrations,
            GROUP_ALERTS_PROJECTION,
            projection,
            name=f"{GROUP_ALERTS_PROJECTION}-{services.settings.ingest_id}",
            linger_ms=services.settings.eventlog.projection_linger_ms,
        )
    ]
