"""Registration statistics as InfluxDB time series, and the periodic gauges of registered users and servers.

`StatsProjection` (a BatchHandler beside the alerts, in their consumer group) writes one point per
registration outcome to database `sbc_sidecar`, measurement `registrations`:

    registrations,outcome=granted,account_sid=<sid>,realm=<realm> count=1i <occurred_at ns>

with `outcome` one of granted, challenged, failed (with tag `status`), expired, refreshed, removed;
`account_sid` where the fact names the account (challenges and expiries do not), `realm` the AOR's host.
Counts per account, realm and outcome are then `SELECT sum(count) ... GROUP BY time(1m), outcome, ...`.
A point's timestamp is its event's time plus a few nanoseconds taken from the event id, so re-delivered
events rewrite their points and two events of one series in the same microsecond stay two points.

`RegistrationGauges` (a Worker of the projections role) counts, every `interval_s` (30 s, as the
original's `sbc.users.count`), the live members of `active-user`, the distinct user parts among them,
and the feature and RTP servers; it reports them to `Metrics` (Prometheus, StatsD) and, with InfluxDB,
as `registrations_active,realm=<realm> count=<n>i` and `registered_users users=<n>i,active=<n>i`,
timestamped at the start of the interval, so every SBC of a cluster writes the same points.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from events import (
    Event,
    RegisterChallenged,
    RegisterRejected,
    RegistrationExpired,
    RegistrationGranted,
    RegistrationRefreshed,
    RegistrationRemoved,
    StreamNames,
)
from events.streams import ACTIVE_USER_KEY
from projections.alerts import event_time_ns
from projections.timeseries import TimeSeriesUnavailable, TimeSeriesWriter, line, write_batch
from runtime.faults import STORE_FAULTS
from runtime.handling import Delivery, Outcome
from runtime.metrics import Metrics
from runtime.periodic import Periodic

if TYPE_CHECKING:
    from runtime.services import Services, Worker

log = logging.getLogger(__name__)

DATABASE = "sbc_sidecar"
MEASUREMENT = "registrations"
USER_KEY_PREFIX = "user:"


def _realm(aor: str | None) -> str | None:
    if not aor or "@" not in aor:
        return None
    return aor.rpartition("@")[2] or None


def outcome_of(event: Event) -> tuple[str, dict[str, str | None]] | None:
    """(outcome, tags) of a registration fact, else None."""
    if isinstance(event, RegistrationGranted):
        return "granted", {"account_sid": event.account_sid, "realm": _realm(event.aor)}
    if isinstance(event, RegisterChallenged):
        return "challenged", {"realm": event.realm or _realm(event.aor)}
    if isinstance(event, RegisterRejected):
        return "failed", {"account_sid": event.account_sid, "realm": _realm(event.aor), "status": str(event.status)}
    if isinstance(event, RegistrationExpired):
        return "expired", {"realm": _realm(event.aor)}
    if isinstance(event, RegistrationRefreshed):
        return "refreshed", {"realm": _realm(event.aor)}
    if isinstance(event, RegistrationRemoved):
        return "removed", {"account_sid": event.account_sid, "realm": _realm(event.aor)}
    return None


def stats_line(event: Event) -> str | None:
    found = outcome_of(event)
    if found is None:
        return None
    outcome, tags = found
    # The microsecond time of the event, and 0-999 ns from its id: unique per event, the same on re-delivery.
    timestamp_ns = event_time_ns(event) + zlib.crc32(event.event_id.encode()) % 1000
    return line(MEASUREMENT, {"outcome": outcome, **tags}, {"count": 1}, timestamp_ns, first_tags=("outcome",))


class StatsProjection:
    """A BatchHandler writing a batch's registration outcomes to InfluxDB in one request."""

    def __init__(self, writer: TimeSeriesWriter) -> None:
        self.writer = writer
        self.written = 0

    async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome | BaseException]:
        lines = [text for text in (stats_line(d.event) for d in deliveries) if text]
        written = await write_batch(self.writer, DATABASE, lines, "registration stats")
        if isinstance(written, TimeSeriesUnavailable):
            return [written for _ in deliveries]
        self.written += written
        return [Outcome() for _ in deliveries]


def count_users(members: Sequence[bytes | str]) -> tuple[int, Counter[str]]:
    """Distinct user parts (jambonz's `sbc.users.count`) and live bindings per realm, from `active-user`."""
    users: set[str] = set()
    per_realm: Counter[str] = Counter()
    for member in members:
        text = member.decode() if isinstance(member, bytes) else member
        aor = text.removeprefix(USER_KEY_PREFIX)
        user, _, realm = aor.rpartition("@")
        users.add(user)
        per_realm[realm] += 1
    return len(users), per_realm


class RegistrationGauges(Periodic):
    """A Worker: every `interval_s`, the registered users and the servers, to metrics and InfluxDB."""

    name = "registration-gauges"
    faults = (*STORE_FAULTS, OSError, TimeoutError)

    def __init__(
        self,
        redis: Redis,
        names: StreamNames,
        metrics: Metrics,
        writer: TimeSeriesWriter | None = None,
        *,
        interval_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(interval_s)
        self.redis = redis
        self.names = names
        self.metrics = metrics
        self.writer = writer
        self.clock = clock

    async def step(self) -> None:
        await self.sample()

    async def sample(self) -> None:
        now_s = self.clock()
        async with asyncio.timeout(5.0):
            members: list[bytes] = await self.redis.zrangebyscore(ACTIVE_USER_KEY, int(now_s * 1000), "+inf")  # type: ignore[assignment]
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.scard(self.names.active_fs)
                pipe.scard(self.names.active_rtp)
                feature_servers, rtp_servers = await pipe.execute()
        users, per_realm = count_users(members)
        self.metrics.users_counted(users, len(members))
        self.metrics.servers_counted(int(feature_servers), int(rtp_servers))
        if self.writer is None:
            return
        slot_ns = int(now_s // self.interval_s * self.interval_s) * 1_000_000_000
        lines = [line("registered_users", {}, {"users": users, "active": len(members)}, slot_ns)]
        lines += [line("registrations_active", {"realm": r}, {"count": n}, slot_ns) for r, n in per_realm.items() if r]
        try:
            await self.writer.write(DATABASE, lines)
        except TimeSeriesUnavailable as exc:
            log.warning("registration gauges not written error=%s", exc)


def build(services: Services) -> list[Worker]:
    """The InfluxDB consumer (alerts and registration stats in one group, `projection-alerts`, so an InfluxDB
    outage holds back nothing else) and the gauges; without `JAMBONES_TIME_SERIES_HOST`, the gauges alone."""
    from events.streams import GROUP_ALERTS_PROJECTION
    from projections.alerts import AlertsProjection
    from runtime.consumer import Consumer
    from runtime.handling import Fanout

    settings = services.settings
    writer = services.time_series
    gauges = RegistrationGauges(services.redis, services.names, services.metrics, writer)
    if writer is None:
        return [gauges]
    consumers: list[Worker] = []
    for names in services.partitions:
        suffix = f"-p{names.partition}" if names.partition else ""
        consumers.append(
            Consumer(
                services.eventlog,
                [names.registrations, names.refreshes],
                GROUP_ALERTS_PROJECTION,
                Fanout(AlertsProjection(writer), StatsProjection(writer)),
                name=f"{GROUP_ALERTS_PROJECTION}-{settings.ingest_id}{suffix}",
                linger_ms=settings.eventlog.projection_linger_ms,
                names=names,
            )
        )
    return [*consumers, gauges]
