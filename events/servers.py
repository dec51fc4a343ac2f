"""Events of the heartbeat path: feature servers and RTP servers checking in, leaving, expiring (SPEC 3)."""

from __future__ import annotations

from typing import Literal

from events.envelope import Event

# "fs": a feature server, member `<ip>:<port>` of `<cluster>:active-fs`.
# "rtp": an RTP server, member `<ip>` of `<cluster>:active-rtp`.
ServerKind = Literal["fs", "rtp"]
# What can lapse: a server, or a feature server's service URL (member of `<cluster>:fs-service-url`).
ExpiringKind = Literal["fs", "rtp", "service-url"]


class ServerCheckedIn(Event, frozen=True, kw_only=True):
    """A server sent an `open` heartbeat: it is (still) a member of its set."""

    TYPE = "ServerCheckedIn"

    kind: ServerKind
    member: str
    ip: str
    port: int
    service_url: str | None = None  # X-FS-ServiceUrl, kept in `<cluster>:fs-service-url` beside the member
    status: str = "open"


class ServerLeft(Event, frozen=True, kw_only=True):
    """A server sent a heartbeat with any status but `open`, or an `open` one while drained."""

    TYPE = "ServerLeft"

    kind: ServerKind
    member: str
    ip: str
    port: int
    service_url: str | None = None
    status: str  # the status applied: what the server sent, or "closed" when `drained`
    drained: bool = False  # an `open` from a feature server whose IP is in `<cluster>:drained-fs`


class ServerExpired(Event, frozen=True, kw_only=True):
    """A server (or service URL) sent no `open` heartbeat to any sidecar for EXPIRES_INTERVAL ms."""

    TYPE = "ServerExpired"

    kind: ExpiringKind
    member: str
    last_seen_ms: int
