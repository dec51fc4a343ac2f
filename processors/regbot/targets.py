"""Which gateways to register and how their REGISTER looks (SPEC 4.2, 4.3): pure, from MySQL rows."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_FROM_DOMAIN = re.compile(r"^[A-Za-z0-9.-]+(:\d+)?$")
# The edge puts its own address for the transport where the Contact names this host (drachtio does the same).
EDGE_HOST = "localhost"


@dataclass(frozen=True, slots=True)
class Carrier:
    """The columns of `voip_carriers` the regbot uses."""

    voip_carrier_sid: str
    name: str
    account_sid: str | None = None
    service_provider_sid: str | None = None
    requires_register: bool = False
    is_active: bool = True
    register_username: str | None = None
    register_password: str | None = None
    register_sip_realm: str | None = None
    register_from_user: str | None = None
    register_from_domain: str | None = None
    register_public_ip_in_contact: bool = False
    outbound_sip_proxy: str | None = None
    trunk_type: str = "static_ip"

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> Carrier:
        def text(name: str) -> str | None:
            value = row.get(name)
            return None if value is None or value == "" else str(value)

        return cls(
            voip_carrier_sid=str(row["voip_carrier_sid"]),
            name=str(row.get("name") or ""),
            account_sid=text("account_sid"),
            service_provider_sid=text("service_provider_sid"),
            requires_register=bool(row.get("requires_register")),
            is_active=bool(row.get("is_active")),
            register_username=text("register_username"),
            register_password=text("register_password"),
            register_sip_realm=text("register_sip_realm"),
            register_from_user=text("register_from_user"),
            register_from_domain=text("register_from_domain"),
            register_public_ip_in_contact=bool(row.get("register_public_ip_in_contact")),
            outbound_sip_proxy=text("outbound_sip_proxy"),
            trunk_type=text("trunk_type") or "static_ip",
        )


@dataclass(frozen=True, slots=True)
class Gateway:
    """The columns of `sip_gateways` the regbot uses."""

    sip_gateway_sid: str
    voip_carrier_sid: str
    ipv4: str
    port: int | None = None
    outbound: bool = True
    is_active: bool = True
    protocol: str = "udp"
    use_sips_scheme: bool = False

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> Gateway:
        port = row.get("port")
        return cls(
            sip_gateway_sid=str(row["sip_gateway_sid"]),
            voip_carrier_sid=str(row["voip_carrier_sid"]),
            ipv4=str(row["ipv4"]),
            port=int(str(port)) if port not in (None, "") else None,
            outbound=bool(row.get("outbound")),
            is_active=bool(row.get("is_active")),
            protocol=str(row.get("protocol") or "udp"),
            use_sips_scheme=bool(row.get("use_sips_scheme")),
        )


@dataclass(frozen=True, slots=True)
class Target:
    """One gateway to keep registered: everything its REGISTER needs. Holds the password: never log it."""

    carrier: Carrier
    gateway: Gateway
    request_uri: str
    next_hop: str
    from_uri: str
    contact: str
    transport: str
    username: str
    password: str
    config_key: str  # SPEC 4.2: a change of any part means a new regbot

    def __repr__(self) -> str:
        return f"Target(gateway={self.gateway.sip_gateway_sid}, carrier={self.carrier.voip_carrier_sid})"


@dataclass(frozen=True, slots=True)
class Skipped:
    """A gateway that is not registered, and why (`register_status` is written for an invalid From domain)."""

    carrier: Carrier
    gateway: Gateway
    reason: str
    write_status: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    targets: tuple[Target, ...]
    skipped: tuple[Skipped, ...]


def is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def transport_of(protocol: str) -> str:
    """`tls/srtp` → `tls`; anything else lower-cased up to the first `/`."""
    return (protocol or "udp").split("/", 1)[0].lower()


def registrable(carrier: Carrier, gateway: Gateway) -> bool:
    return carrier.requires_register and carrier.is_active and gateway.outbound and gateway.is_active


def plan(
    carriers: Sequence[Carrier],
    gateways: Sequence[Gateway],
    account_realms: Mapping[str, str | None],
    system_sip_domain: str | None,
    *,
    contact_use_ip: bool,
    expires_s: int,
) -> Plan:
    """The gateways to register, in MySQL order, with the original's filters and de-duplication."""
    by_sid = {c.voip_carrier_sid: c for c in carriers if c.requires_register and c.is_active}
    targets: list[Target] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for gateway in gateways:
        carrier = by_sid.get(gateway.voip_carrier_sid)
        if carrier is None or not registrable(carrier, gateway):
            continue
        if not carrier.register_password:
            skipped.append(Skipped(carrier, gateway, "carrier has no register_password"))
            continue
        dedup = f"{gateway.ipv4}:undefined:{carrier.register_username}:{carrier.register_password}"
        if dedup in seen:
            skipped.append(Skipped(carrier, gateway, "same host and credentials as an earlier gateway"))
            continue
        seen.add(dedup)
        realm = None
        if carrier.account_sid and not carrier.register_public_ip_in_contact:
            realm = account_realms.get(carrier.account_sid)
        target = target_of(
            carrier, gateway, realm, system_sip_domain, contact_use_ip=contact_use_ip, expires_s=expires_s
        )
        if isinstance(target, Skipped):
            skipped.append(target)
        else:
            targets.append(target)
    return Plan(tuple(targets), tuple(skipped))


def target_of(
    carrier: Carrier,
    gateway: Gateway,
    account_sip_realm: str | None,
    system_sip_domain: str | None,
    *,
    contact_use_ip: bool,
    expires_s: int,
) -> Target | Skipped:
    """SPEC 4.3: the REGISTER's Request-URI, next hop, From/To and Contact for one gateway."""
    sip_realm = carrier.register_sip_realm or gateway.ipv4
    username = carrier.register_username or ""
    from_user = carrier.register_from_user or username
    from_domain = carrier.register_from_domain or sip_realm
    if not _FROM_DOMAIN.match(from_domain):
        return Skipped(carrier, gateway, f"Invalid from_domain {from_domain}", write_status=True)
    transport = transport_of(gateway.protocol)
    scheme = "sips" if transport == "tls" and gateway.use_sips_scheme else "sip"
    if carrier.register_public_ip_in_contact or contact_use_ip:
        contact_host = EDGE_HOST
    elif account_sip_realm:
        contact_host = account_sip_realm
    elif system_sip_domain:
        contact_host = system_sip_domain
    else:
        contact_host = sip_realm
    if carrier.outbound_sip_proxy:
        proxy = carrier.outbound_sip_proxy
        proxy = proxy if proxy.startswith(("sip:", "sips:")) else f"sip:{proxy}"
        next_hop = f"{proxy};transport={transport}"
    else:
        # A port given means that port (a hostname's A records there); none, a hostname's SRV records (RFC 3263).
        # The original dropped a hostname's port, so a carrier's configured port was never used.
        port = f":{gateway.port}" if gateway.port else ""
        next_hop = f"sip:{gateway.ipv4}{port};transport={transport}"
    from_uri = f"sip:{from_user}@{from_domain}"
    contact = f"<{scheme}:{from_user}@{contact_host};transport={transport}>;expires={expires_s}"
    key = "|".join(
        str(part)
        for part in (
            carrier.voip_carrier_sid,
            gateway.ipv4,
            gateway.port,
            username,
            carrier.register_password,
            sip_realm,
            transport,
            gateway.use_sips_scheme,
            carrier.register_public_ip_in_contact or contact_use_ip,
            carrier.outbound_sip_proxy,
            carrier.trunk_type,
            gateway.sip_gateway_sid,
            account_sip_realm,
            from_user,
            from_uri,
            contact_host,
        )
    )
    return Target(
        carrier=carrier,
        gateway=gateway,
        request_uri=f"{scheme}:{sip_realm}",
        next_hop=next_hop,
        from_uri=from_uri,
        contact=contact,
        transport=transport,
        username=username,
        password=carrier.register_password or "",
        config_key=key,
    )
