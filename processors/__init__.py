"""Processors: the decisions. Each is a pure decide() beside a thin I/O shell run by the consumer loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.services import Services, Worker


def build(services: Services) -> list[Worker]:
    """The processors role: registrar, heartbeat (with server expiry) and registration expiry."""
    from events.streams import GROUP_REGISTRAR
    from processors import expiry, heartbeat
    from processors.registrar import Registrar, RegistrarConfig
    from runtime.consumer import Consumer

    assert services.mysql is not None and services.http is not None, "processors need MySQL and HTTP"
    registrar = Registrar(RegistrarConfig.from_settings(services.settings), services.redis, services.mysql,
                          services.http, services.clock)
    workers: list[Worker] = [
        Consumer(services.eventlog, services.names.requests, GROUP_REGISTRAR, registrar),
    ]
    workers += heartbeat.build(services)
    workers += expiry.build(services)
    return workers
