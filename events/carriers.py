"""Events of outbound registration to carriers (SPEC 4.1-4.5): leadership, the REGISTER command, its answers.

`OutboundRegisterRequested` is the one imperative here: it travels on the `commands` stream, from the regbot
to the SIP edge. Everything else is a fact on the `carriers` stream. No carrier password appears in clear:
the command carries it sealed with a key derived from ENCRYPTION_SECRET (runtime/sealed.py).
"""

from __future__ import annotations

from events.envelope import Event


class RegbotLeaderAcquired(Event, frozen=True, kw_only=True):
    """This instance took the cluster's regbot lock (`<cluster>:regbot-token`)."""

    TYPE = "RegbotLeaderAcquired"

    instance: str  # the ingest id of the process that leads
    ttl_s: int


class RegbotLeaderLost(Event, frozen=True, kw_only=True):
    """This instance no longer holds the lock: another took it, or it lapsed, or the process stopped."""

    TYPE = "RegbotLeaderLost"

    instance: str
    reason: str  # "taken", "lapsed", "stopped"


class OutboundRegisterRequested(Event, frozen=True, kw_only=True):
    """Command: send this REGISTER to a carrier gateway and report its final answer (SPEC 4.3).

    `contact` may name the host `localhost`: the edge puts its own address for the transport there
    (as drachtio-server does). `password_sealed` is the carrier password sealed for the edge.
    """

    TYPE = "OutboundRegisterRequested"

    attempt_id: str  # names this attempt; the answer carries it back
    voip_carrier_sid: str
    sip_gateway_sid: str
    carrier_name: str
    request_uri: str
    next_hop: str  # sip:<host>[:port];transport=<t>, or the outbound proxy
    from_uri: str
    contact: str  # the whole Contact header value
    call_id: str
    cseq: int  # of the unauthenticated request; an authenticated retry uses cseq + 1
    expires_s: int
    user_agent: str
    username: str
    password_sealed: str
    gateway_host: str  # the gateway's ipv4 column: an IP or a hostname (for the eph-gw-ip addresses)
    gateway_port: int | None = None
    transport: str = "udp"
    resolve_addresses: bool = False  # a reg trunk: report the gateway's IP addresses with the answer
    deadline_ms: int = 0  # nobody acts on an answer after this (the regbot sends it again)
    edge_id: str = ""  # the ingest that sends it: the leader's own, so every REGISTER leaves from one SBC


class OutboundRegisterAnswered(Event, frozen=True, kw_only=True):
    """The edge's report: the final answer to a REGISTER command (after at most one digest retry).

    `status` 0 means nothing came back because sending failed (`reason` says why).
    """

    TYPE = "OutboundRegisterAnswered"

    attempt_id: str
    voip_carrier_sid: str
    sip_gateway_sid: str
    status: int
    reason: str
    call_id: str
    first_cseq: int
    last_cseq: int
    expires_header: int | None = None
    contact_expires: int | None = None  # the first Contact's expires parameter in a 200
    authenticated: bool = False  # the answer is to a retry with credentials
    source: str | None = None  # ip:port the answer came from, when the front knows it
    unanswered: tuple[str, ...] = ()  # ip:port of located addresses tried before, that gave no answer at all
    addresses: tuple[str, ...] = ()  # the gateway's IPv4 addresses, for reg trunks


class CarrierRegistered(Event, frozen=True, kw_only=True):
    """A gateway's REGISTER got 200 OK: the binding holds for `expires_s`, refreshed at `refresh_at_ms`."""

    TYPE = "CarrierRegistered"

    voip_carrier_sid: str
    sip_gateway_sid: str
    carrier_name: str
    trunk_type: str
    status: int
    reason: str
    call_id: str
    cseq: int
    expires_s: int
    refresh_at_ms: int
    addresses: tuple[str, ...] = ()


class CarrierRegisterFailed(Event, frozen=True, kw_only=True):
    """A gateway's REGISTER got anything but 200 (or could not be sent): retried at `retry_at_ms`."""

    TYPE = "CarrierRegisterFailed"

    voip_carrier_sid: str
    sip_gateway_sid: str
    carrier_name: str
    trunk_type: str
    status: int
    reason: str
    call_id: str
    cseq: int
    retry_at_ms: int | None  # None: not retried (the failure threshold stopped the regbot)
    remove_failures: int  # consecutive answers with a REGISTER_RESPONSE_REMOVE code
    addresses: tuple[str, ...] = ()


class CarrierRegistrationDisabled(Event, frozen=True, kw_only=True):
    """The failure threshold was reached on a carrier that is not a reg trunk: `requires_register = 0`."""

    TYPE = "CarrierRegistrationDisabled"

    voip_carrier_sid: str
    sip_gateway_sid: str
    carrier_name: str
    account_sid: str | None
    service_provider_sid: str | None
    status: int
    failures: int


class CarrierDeactivated(Event, frozen=True, kw_only=True):
    """The failure threshold was reached on a reg trunk (or a carrier no longer found): `is_active = 0`."""

    TYPE = "CarrierDeactivated"

    voip_carrier_sid: str
    sip_gateway_sid: str
    carrier_name: str
    account_sid: str | None
    service_provider_sid: str | None
    status: int
    failures: int


class CarrierRegistrationStopped(Event, frozen=True, kw_only=True):
    """A gateway is no longer registered (configuration changed, carrier gone, threshold reached)."""

    TYPE = "CarrierRegistrationStopped"

    voip_carrier_sid: str
    sip_gateway_sid: str
    carrier_name: str
    reason: str
    addresses: tuple[str, ...] = ()  # eph-gw-ip fields of the carrier to delete (reg trunks)


CARRIER_EVENTS = (
    RegbotLeaderAcquired,
    RegbotLeaderLost,
    OutboundRegisterRequested,
    OutboundRegisterAnswered,
    CarrierRegistered,
    CarrierRegisterFailed,
    CarrierRegistrationDisabled,
    CarrierDeactivated,
    CarrierRegistrationStopped,
)
