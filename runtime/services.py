"""What the roles are built from: the opened connections and settings of one process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import aiohttp
import aiomysql
from redis.asyncio import Redis

from events import EventCodec, StreamNames
from events.streams import partition_names
from runtime.eventlog import EventLog
from runtime.metrics import Metrics
from runtime.settings import Settings
from runtime.webclient import HttpClient

if TYPE_CHECKING:
    from projections.timeseries import TimeSeriesWriter


class Worker(Protocol):
    """A long-running piece of a role: a consumer, a listener, a sweeper.

    `run` returns after `stop` (having finished its work in hand); `ready` is set once it
    serves (group exists, socket bound).
    """

    name: str
    ready: asyncio.Event

    async def run(self) -> None: ...

    def stop(self) -> None: ...


Clock = Callable[[], float]  # seconds since the epoch, like time.time


@dataclass(slots=True)
class Services:
    settings: Settings
    redis: Redis
    mysql: aiomysql.Pool | None
    http: aiohttp.ClientSession | None
    codec: EventCodec
    names: StreamNames
    eventlog: EventLog
    webhooks: HttpClient | None = None  # the registration webhook's keep-alive client (processors)
    clock: Clock = field(default=time.time)
    metrics: Metrics = field(default_factory=Metrics)  # Prometheus families and StatsD
    time_series: TimeSeriesWriter | None = None  # InfluxDB (v1 or 2.x API); None: alerts and stats are off

    @property
    def partitions(self) -> tuple[StreamNames, ...]:
        """The names of every partition (SIDECAR_PARTITIONS); `names` is partition 0, which also holds what is
        not an AOR's (heartbeats, servers, carriers, commands, replies, membership, the dead letters)."""
        return partition_names(self.names.cluster_id, self.settings.eventlog.partitions)
