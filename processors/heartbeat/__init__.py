"""The heartbeat processor: feature/RTP server OPTIONS → server facts and answers; their expiry."""

from __future__ import annotations

from events.streams import GROUP_HEARTBEAT
from processors.heartbeat.decide import Decision, decide, server_kind
from processors.heartbeat.expiry import ServerExpiry
from processors.heartbeat.shell import Heartbeat
from runtime.consumer import Consumer
from runtime.services import Services, Worker


def build(services: Services) -> list[Worker]:
    """The heartbeat consumer (group `heartbeat` on `requests`) and the server expiry sweep."""
    settings = services.settings
    consumer = Consumer(services.eventlog, services.names.requests, GROUP_HEARTBEAT,
                        Heartbeat(services.redis, services.names, services.clock))
    expiry = ServerExpiry(services.redis, services.eventlog,
                          expires_interval_ms=settings.expires_interval_ms,
                          check_interval_ms=settings.check_expires_interval_ms,
                          clock=services.clock)
    return [consumer, expiry]


__all__ = ["Decision", "Heartbeat", "ServerExpiry", "build", "decide", "server_kind"]
