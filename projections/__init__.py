"""Projections: Redis (and later InfluxDB) state derived from the events, idempotent and rebuildable."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.services import Services, Worker


def build(services: Services) -> list[Worker]:
    """The projections role: registrations (user:<aor>, active-user), per-AOR history, InfluxDB alerts."""
    from projections import alerts, history, registrations

    return [*registrations.build(services), *history.build(services), *alerts.build(services)]
