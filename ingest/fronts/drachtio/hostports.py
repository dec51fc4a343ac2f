"""drachtio's `hostport` / `localHostports` strings read the way SPEC.md section 1.2 says.

Both are comma-joined `transport/ip:port` entries, e.g. `udp/3.1.2.3:5060,tcp/3.1.2.3:5060`.
`hostport` names the public (external) addresses, `localHostports` the bound local ones.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_TLS_PORT = 5061

_RFC1918 = tuple(ipaddress.ip_network(cidr) for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


@dataclass(frozen=True, slots=True)
class HostPort:
    """One listening point: `transport` lower-case, `host` as drachtio wrote it."""

    transport: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PublicSipAddresses:
    """jambonz's `sbcPublicIpAddress`: `ip:port` per transport; tcp is not kept."""

    udp: str | None = None
    tls: str | None = None
    wss: str | None = None


@dataclass(frozen=True, slots=True)
class SbcAddressRecord:
    """One public IP and its ports, as `addSbcAddress(ipv4, port, tls_port, wss_port)` stores it."""

    ipv4: str
    port: int | None = None
    tls_port: int | None = None
    wss_port: int | None = None


def parse_hostports(text: str | None) -> list[HostPort]:
    """Split a hostport string into entries, in order; entries that do not parse are skipped."""
    entries: list[HostPort] = []
    for item in (text or "").split(","):
        transport, slash, address = item.strip().partition("/")
        host, colon, port = address.rpartition(":")
        if not (slash and colon and transport and host and port.isascii() and port.isdigit()):
            continue
        entries.append(HostPort(transport.lower(), host, int(port)))
    return entries


def parse_network_cidrs(cidrs: Iterable[str]) -> tuple[IpNetwork, ...]:
    """`JAMBONES_NETWORK_CIDR` parts as networks (host bits allowed); ValueError names a bad one."""
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr.strip())


def public_sip_addresses(hostport: str | None) -> PublicSipAddresses:
    """udp/tls/wss `ip:port` from `hostport`; the last entry of a transport wins, tcp is ignored.

    With no tls entry, tls is `<ip of the last udp entry>:5061`. With no udp entry either it stays
    None (the original would write `undefined:5061`).
    """
    found: dict[str, str] = {}
    last_udp_host: str | None = None
    for entry in parse_hostports(hostport):
        if entry.transport in ("udp", "tls", "wss"):
            found[entry.transport] = entry.address
        if entry.transport == "udp":
            last_udp_host = entry.host
    tls = found.get("tls")
    if tls is None and last_udp_host is not None:
        tls = f"{last_udp_host}:{DEFAULT_TLS_PORT}"
    return PublicSipAddresses(udp=found.get("udp"), tls=tls, wss=found.get("wss"))


def private_sip_address(local_hostports: str | None, networks: Sequence[IpNetwork]) -> str | None:
    """`ip:port` of the last tcp entry of `localHostports` inside one of `networks`, or None."""
    chosen: str | None = None
    for entry in parse_hostports(local_hostports):
        if entry.transport == "tcp" and _in_any(entry.host, networks):
            chosen = entry.address
    return chosen


def public_address_records(hostport: str | None) -> list[SbcAddressRecord]:
    """One record per IP of the udp/tls/wss entries of `hostport`, minus RFC 1918 addresses.

    Records keep the order in which their IP first appears. The tls default of
    `public_sip_addresses` does not apply here: `tls_port` is None unless drachtio listed tls.
    """
    by_ip: dict[str, SbcAddressRecord] = {}
    for entry in parse_hostports(hostport):
        field = {"udp": "port", "tls": "tls_port", "wss": "wss_port"}.get(entry.transport)
        if field is None:
            continue
        record = by_ip.get(entry.host, SbcAddressRecord(ipv4=entry.host))
        by_ip[entry.host] = _with_port(record, field, entry.port)
    return [record for ip, record in by_ip.items() if not _in_any(ip, _RFC1918)]


def _with_port(record: SbcAddressRecord, field: str, port: int) -> SbcAddressRecord:
    ports = {"port": record.port, "tls_port": record.tls_port, "wss_port": record.wss_port, field: port}
    return SbcAddressRecord(ipv4=record.ipv4, **ports)


def _in_any(host: str, networks: Sequence[IpNetwork]) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # a hostname is in no CIDR
    return any(address.version == network.version and address in network for network in networks)
