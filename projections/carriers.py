"""The carriers projection: what jambonz reads about outbound registrations (SPEC 4.4, 5.3).

- `voip_carriers.register_status` (MySQL): the original's JSON after every answer (status, reason, cseq,
  callId, timestamp, expires), the last writer of a carrier's gateways winning;
- `eph-gw-ip:<ip>` hashes for reg trunks: carrier sid → expiry in unix seconds, key EX 7200; fields deleted
  when the registration stops;
- at the failure threshold: `requires_register = 0` or `is_active = 0` and the InfluxDB alert (through the
  process's `TimeSeriesWriter`, v1 or 2.x).

It needs MySQL, so it runs with the processors. MySQL and InfluxDB writes happen before the ack; a failed
write leaves the batch pending to be retried, and every write is idempotent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime

import aiomysql
import pymysql

from events import (
    CarrierDeactivated,
    CarrierRegistered,
    CarrierRegisterFailed,
    CarrierRegistrationDisabled,
    CarrierRegistrationStopped,
    Event,
)
from events.streams import eph_gw_ip_key
from processors.regbot.config import query
from projections.alerts import DATABASE, MEASUREMENT, event_time_ns
from projections.timeseries import TimeSeriesUnavailable, TimeSeriesWriter, line, write_batch
from runtime.handling import Delivery, Outcome, RedisCommand

log = logging.getLogger(__name__)

EPH_GW_IP_TTL_S = 7200
STATUS_SQL = "UPDATE voip_carriers SET register_status = %s WHERE voip_carrier_sid = %s"
DISABLE_SQL = "UPDATE voip_carriers SET requires_register = 0 WHERE voip_carrier_sid = %s"
DEACTIVATE_SQL = "UPDATE voip_carriers SET is_active = 0 WHERE voip_carrier_sid = %s"


def iso_time(when: datetime) -> str:
    """JavaScript's `toISOString()`: UTC, milliseconds, `Z`."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def register_status(event: CarrierRegistered | CarrierRegisterFailed) -> str:
    """The `register_status` JSON of an answer (a send failure's reason says what failed, not `{}`)."""
    registered = isinstance(event, CarrierRegistered)
    return json.dumps(
        {
            "status": "ok" if registered else "fail",
            "reason": event.reason,
            "cseq": f"{event.cseq} REGISTER",
            "callId": event.call_id,
            "timestamp": iso_time(event.occurred_at),
            "expires": event.expires_s if isinstance(event, CarrierRegistered) else 0,
        },
        separators=(",", ":"),
    )


def eph_gw_ip_writes(event: Event) -> list[RedisCommand]:
    """The `eph-gw-ip:<ip>` writes of a reg trunk's fact."""
    if isinstance(event, CarrierRegistered | CarrierRegisterFailed):
        if event.trunk_type != "reg":
            return []
        expires = event.expires_s if isinstance(event, CarrierRegistered) else 0
        until = int(event.occurred_at.timestamp()) + expires
        writes: list[RedisCommand] = []
        for ip in event.addresses:
            writes.append(("HSET", eph_gw_ip_key(ip), event.voip_carrier_sid, until))
            writes.append(("EXPIRE", eph_gw_ip_key(ip), EPH_GW_IP_TTL_S))
        return writes
    if isinstance(event, CarrierRegistrationStopped):
        return [("HDEL", eph_gw_ip_key(ip), event.voip_carrier_sid) for ip in event.addresses]  # empty hash: gone
    return []


def alert_line(event: CarrierRegistrationDisabled | CarrierDeactivated) -> str:
    """SPEC 5.3: no alert_type; tags account_sid and service_provider_sid; the original's message."""
    if isinstance(event, CarrierDeactivated):
        message = f"Deactivating carrier {event.carrier_name} (sid:{event.voip_carrier_sid}) due to registration errors"
    else:
        message = f"Disabling Outbound Registration for carrier {event.carrier_name} (sid:{event.voip_carrier_sid})"
    tags = {"account_sid": event.account_sid, "service_provider_sid": event.service_provider_sid}
    return line(MEASUREMENT, tags, {"message": message}, event_time_ns(event))


class CarriersProjection:
    """A BatchHandler over `carriers` (see the module docstring)."""

    def __init__(self, mysql: aiomysql.Pool, writer: TimeSeriesWriter | None = None) -> None:
        self.mysql = mysql
        self.writer = writer  # None: alerts are off (no JAMBONES_TIME_SERIES_HOST)
        self.statuses_written = 0
        self.alerts_written = 0

    async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome | BaseException]:
        results: list[Outcome | BaseException] = []
        alerts: list[str] = []
        for delivery in deliveries:
            event = delivery.event
            try:
                await self._apply_mysql(event)
            except (pymysql.err.MySQLError, OSError, TimeoutError) as exc:
                log.warning("carrier status not written, will retry type=%s error=%s", event.TYPE, exc)
                results.append(exc)
                continue
            if isinstance(event, CarrierRegistrationDisabled | CarrierDeactivated):
                alerts.append(alert_line(event))
            results.append(Outcome(writes=eph_gw_ip_writes(event)))
        written = await write_batch(self.writer, DATABASE, alerts, "carrier alerts")
        if isinstance(written, TimeSeriesUnavailable):
            return [written for _ in deliveries]
        self.alerts_written += written
        return results

    async def _apply_mysql(self, event: Event) -> None:
        if isinstance(event, CarrierRegistered | CarrierRegisterFailed):
            await query(self.mysql, STATUS_SQL, (register_status(event), event.voip_carrier_sid))
            self.statuses_written += 1
        elif isinstance(event, CarrierRegistrationDisabled):
            await query(self.mysql, DISABLE_SQL, (event.voip_carrier_sid,))
            log.warning("outbound registration disabled carrier=%s", event.voip_carrier_sid)
        elif isinstance(event, CarrierDeactivated):
            await query(self.mysql, DEACTIVATE_SQL, (event.voip_carrier_sid,))
            log.warning("carrier deactivated after registration errors carrier=%s", event.voip_carrier_sid)
