"""The alerts projection: jambonz's InfluxDB alerts (SPEC 5.3) from registration facts.

Database and measurement `alerts`, tags `alert_type` (left out when there is none), `account_sid`,
`service_provider_sid`, field `message`, written with the InfluxDB v1 line protocol
(`projections.timeseries`). The rows of SPEC 5.3 on the registration side:

- DeviceLimitReached (hosted mode): `account-device-limit`, "you have exceeded your account limit of N
  registered devices; please consider upgrading your plan";
- WebhookFailed with an HTTP status: `webhook-failure`, "`<url>` returned `<status>`";
- WebhookFailed without one (unreachable, timed out, circuit open): `webhook-connection-failure`,
  "failed to connect to `<url>`".

The carrier rows (OPTIONS ping failures, disabled pings, disabled registration) come with the carrier facts.
Each point's timestamp is its event's `occurred_at` in nanoseconds, so a re-delivered event rewrites the
same point instead of adding one: InfluxDB keeps one point per series and timestamp. The write happens
before the consumer acks; a failed write leaves the batch pending to be retried.
"""

from __future__ import annotations

from collections.abc import Sequence

from events import BlockStarted, DeviceLimitReached, Event, WebhookFailed
from projections.timeseries import TimeSeriesUnavailable, TimeSeriesWriter, line, write_batch
from runtime.handling import Delivery, Outcome

DATABASE = "alerts"
MEASUREMENT = "alerts"


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
    if isinstance(event, BlockStarted):  # brute-force throttling: not a jambonz alert type, our own
        tags = {"account_sid": event.account_sid, "service_provider_sid": event.service_provider_sid}
        message = (
            f"{event.subject_kind} {event.subject} blocked for {event.block_s} s after {event.failures} failed "
            f"authentications within {event.window_s} s (block {event.strike} in a row)"
        )
        return "sip-auth-blocked", tags, message
    return None


def event_time_ns(event: Event) -> int:
    return int(event.occurred_at.timestamp() * 1_000_000) * 1000


def line_of(event: Event) -> str | None:
    alert = alert_of(event)
    if alert is None:
        return None
    alert_type, tags, message = alert
    return line(
        MEASUREMENT,
        {"alert_type": alert_type, **tags},
        {"message": message},
        event_time_ns(event),
        first_tags=("alert_type",),
    )


class AlertsProjection:
    """A BatchHandler that writes a batch's alerts to InfluxDB in one request."""

    def __init__(self, writer: TimeSeriesWriter) -> None:
        self.writer = writer
        self.written = 0

    async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome | BaseException]:
        lines = [text for text in (line_of(d.event) for d in deliveries) if text]
        written = await write_batch(self.writer, DATABASE, lines, "alerts")
        if isinstance(written, TimeSeriesUnavailable):
            return [written for _ in deliveries]
        self.written += written
        return [Outcome() for _ in deliveries]
