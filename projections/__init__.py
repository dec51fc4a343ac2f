"""Projections: Redis (and InfluxDB) state derived from the events, idempotent and rebuildable."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.services import Services, Worker


def build(services: Services) -> list[Worker]:
    """The projections role: the history (one consumer over `registrations` and `refreshes`) and the InfluxDB
    alerts and stats beside it. The registration records are written inline, with the decisions (processors)."""
    from events.streams import GROUP_PROJECTIONS
    from projections import stats
    from projections.archive import build_archiver
    from projections.history import HistoryProjection
    from runtime.consumer import Consumer

    consumers: list[Worker] = [
        Consumer(
            services.eventlog,
            [names.registrations, names.refreshes],
            GROUP_PROJECTIONS,
            HistoryProjection(names, services.settings.eventlog.retention_s),
            linger_ms=services.settings.eventlog.projection_linger_ms,
            names=names,
        )
        for names in services.partitions
    ]
    return [*consumers, *stats.build(services), build_archiver(services)]
