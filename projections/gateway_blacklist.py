"""The gateway blacklist projection: what jambonz reads about pinged carrier gateways (SPEC 4.6, 5.3).

- `blacklist-sip-gateway:<sid>`: `SETEX <OPTIONS_PING_TTL> 1` for a failure that blacklists, `DEL` on a 200
  (sbc-outbound skips a gateway while the key exists);
- `sip_gateways.send_options_ping = 0` for an OPTIONS_RESPONSE_REMOVE code;
- the InfluxDB alerts, with the original's messages, no `alert_type`, tagged with the carrier's account_sid and
  service_provider_sid (none when the carrier row is gone, as the original).

It needs MySQL, so it runs with the processors. MySQL and InfluxDB writes happen before the ack; a failed write
leaves the batch pending to be retried, and every write is idempotent (an alert point's timestamp is its fact's).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import aiomysql
import pymysql

from events import Event, GatewayPingDisabled, GatewayPingFailed, GatewayPingSucceeded
from events.pinger import gateway_blacklist_key
from processors.regbot.config import query
from projections.alerts import DATABASE, MEASUREMENT, event_time_ns
from projections.timeseries import TimeSeriesUnavailable, TimeSeriesWriter, line, write_batch
from runtime.handling import Delivery, Outcome, RedisCommand

log = logging.getLogger(__name__)

DISABLE_PING_SQL = "UPDATE sip_gateways SET send_options_ping = 0 WHERE sip_gateway_sid = %s"


def alert_message(event: Event) -> str | None:
    """SPEC 4.6's alert text of a fact, or None when it makes no alert."""
    if isinstance(event, GatewayPingFailed) and event.blacklisted:
        outcome = f"received: {event.status}" if event.status else f"error: {event.error}"
        return f"Options ping {event.gateway.label} unsuccessfully, {outcome}"
    if isinstance(event, GatewayPingDisabled):
        gateway = event.gateway
        return (
            f"Disabling Options ping for {gateway.ipv4} in carrier {gateway.carrier_name}:"
            f"{gateway.voip_carrier_sid} due to {event.status}"
        )
    return None


def alert_line(event: Event) -> str | None:
    message = alert_message(event)
    gateway = getattr(event, "gateway", None)
    if message is None or gateway is None or not gateway.carrier_found:
        return None
    tags = {"account_sid": gateway.account_sid, "service_provider_sid": gateway.service_provider_sid}
    return line(MEASUREMENT, tags, {"message": message}, event_time_ns(event))


def blacklist_writes(event: Event) -> list[RedisCommand]:
    if isinstance(event, GatewayPingFailed) and event.blacklisted:
        return [("SETEX", gateway_blacklist_key(event.gateway.sip_gateway_sid), event.ttl_s, 1)]
    if isinstance(event, GatewayPingSucceeded):
        return [("DEL", gateway_blacklist_key(event.gateway.sip_gateway_sid))]
    return []


class GatewayBlacklistProjection:
    """A BatchHandler over `carriers` (see the module docstring)."""

    def __init__(self, mysql: aiomysql.Pool, writer: TimeSeriesWriter | None) -> None:
        self.mysql = mysql
        self.writer = writer  # None: alerts are off (no JAMBONES_TIME_SERIES_HOST)
        self.disabled = 0
        self.alerts_written = 0

    async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome | BaseException]:
        results: list[Outcome | BaseException] = []
        alerts: list[str] = []
        for delivery in deliveries:
            event = delivery.event
            if isinstance(event, GatewayPingDisabled):
                try:
                    await query(self.mysql, DISABLE_PING_SQL, (event.gateway.sip_gateway_sid,))
                except (pymysql.err.MySQLError, OSError, TimeoutError) as exc:
                    log.warning(
                        "send_options_ping not cleared, will retry gateway=%s error=%s",
                        event.gateway.sip_gateway_sid,
                        exc,
                    )
                    results.append(exc)
                    continue
                self.disabled += 1
                log.warning("options ping disabled gateway=%s status=%d", event.gateway.sip_gateway_sid, event.status)
            alert = alert_line(event)
            if alert is not None:
                alerts.append(alert)
            results.append(Outcome(writes=blacklist_writes(event)))
        written = await write_batch(self.writer, DATABASE, alerts, "gateway alerts")
        if isinstance(written, TimeSeriesUnavailable):
            return [written for _ in deliveries]
        self.alerts_written += written
        return results
