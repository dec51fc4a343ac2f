"""Events of the OPTIONS ping of carrier gateways (SPEC 4.6): the ping command, the edge's answer, the facts.

`GatewayPingRequested` travels on `commands`, from a process's pinger to its own SIP edge: every SBC pings
from its own address. The edge reports `GatewayPingAnswered` on `carriers`; the pinger turns it into
`GatewayPingSucceeded`, `GatewayPingFailed` and, for an OPTIONS_RESPONSE_REMOVE code, `GatewayPingDisabled`.
"""

from __future__ import annotations

import msgspec

from events.envelope import Event
from events.streams import StreamNames

# The pinger reads the edges' answers on `carriers` with one group, the gateway blacklist projection (the
# blacklist key, `send_options_ping`, the alerts) follows its facts with another.
GROUP_PINGER = "pinger"
GROUP_GATEWAY_BLACKLIST_PROJECTION = "projection-gateway-blacklist"


def gateway_blacklist_key(sip_gateway_sid: str) -> str:
    """`blacklist-sip-gateway:<sid>` (SPEC 4.6, 5.6): a gateway sbc-outbound skips. No cluster prefix."""
    return f"blacklist-sip-gateway:{sip_gateway_sid}"


def gateway_pings_key(names: StreamNames, sip_gateway_sid: str) -> str:
    """Hash edge id → `<status>:<unix ms>`: the latest OPTIONS answer each SBC got from a gateway."""
    return f"{names.prefix}:gateway-pings:{sip_gateway_sid}"


class PingedGateway(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A gateway as pinged, with what its alerts name: its carrier (absent when the carrier row is gone)."""

    sip_gateway_sid: str
    voip_carrier_sid: str
    ipv4: str
    port: int | None = None
    protocol: str = "udp"  # the column as it is (`tls/srtp` too): the alert shows it so
    carrier_found: bool = True
    carrier_name: str = ""
    account_sid: str | None = None
    service_provider_sid: str | None = None

    @property
    def label(self) -> str:
        """`<ipv4>[:<port>];transport=<protocol>`, as the original's alert names the gateway."""
        port = f":{self.port}" if self.port else ""
        return f"{self.ipv4}{port};transport={self.protocol}"


class GatewayPingRequested(Event, frozen=True, kw_only=True):
    """Command: send OPTIONS to a gateway from the edge `edge_id` and report the final answer."""

    TYPE = "GatewayPingRequested"

    gateway: PingedGateway
    request_uri: str  # sip:<ipv4>[:<port>], or sips:<ipv4>
    next_hop: str  # sip:<ipv4>[:<port>];transport=<t>
    timeout_ms: int  # no final answer within this: a 408, as Timer F
    deadline_ms: int = 0  # not sent after this (the next round sends another)
    edge_id: str = ""


class GatewayPingAnswered(Event, frozen=True, kw_only=True):
    """The edge's report of one ping: the final status, or 0 when it could not be sent (`error` says why)."""

    TYPE = "GatewayPingAnswered"

    gateway: PingedGateway
    edge_id: str
    status: int
    reason: str = ""
    error: str | None = None


class GatewayPingSucceeded(Event, frozen=True, kw_only=True):
    """A gateway answered 200 to this SBC's OPTIONS: it is not blacklisted (`cleared`: it was)."""

    TYPE = "GatewayPingSucceeded"

    gateway: PingedGateway
    edge_id: str
    cleared: bool = False


class GatewayPingFailed(Event, frozen=True, kw_only=True):
    """A gateway answered anything but 200 to this SBC's OPTIONS, or the OPTIONS could not be sent.

    `blacklisted`: this failure puts the gateway on the blacklist for `ttl_s` (and alerts). It does not when
    the gateway is already blacklisted, or while another SBC reaches it (`reachable_from`: the SBCs whose
    latest ping, recent enough, succeeded).
    """

    TYPE = "GatewayPingFailed"

    gateway: PingedGateway
    edge_id: str
    status: int
    reason: str = ""
    error: str | None = None
    blacklisted: bool = False
    ttl_s: int = 0
    reachable_from: tuple[str, ...] = ()


class GatewayPingDisabled(Event, frozen=True, kw_only=True):
    """A gateway answered an OPTIONS_RESPONSE_REMOVE code: `send_options_ping = 0`, it is pinged no more."""

    TYPE = "GatewayPingDisabled"

    gateway: PingedGateway
    edge_id: str
    status: int


PINGER_EVENTS = (
    GatewayPingRequested,
    GatewayPingAnswered,
    GatewayPingSucceeded,
    GatewayPingFailed,
    GatewayPingDisabled,
)
