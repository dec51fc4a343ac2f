"""The heartbeat processor: feature/RTP server OPTIONS → server facts and answers; their expiry."""

from processors.heartbeat.decide import Decision, decide, server_kind
from processors.heartbeat.expiry import ServerExpiry
from processors.heartbeat.shell import Heartbeat

__all__ = ["Decision", "Heartbeat", "ServerExpiry", "decide", "server_kind"]
