"""Where a request to a SIP server goes: RFC 3263 with the transport known (SRV, then A records).

The native front sends the outbound REGISTERs and gateway pings through it, and the edge works out a reg
trunk's `eph-gw-ip` addresses with it (SPEC 4.4), so the addresses let in are the ones registered with:

- an IP address is used as it is, at the port given or the transport's default (5060, 5061 for TLS);
- a hostname with a port: its A records, at that port;
- a hostname without a port: its SRV records (`_sip._udp`, `_sip._tcp` or `_sips._tcp` by transport), ordered by
  priority and, within one priority, by a weighted random draw (RFC 2782), each target's A records at the SRV
  port; when there are none (no SRV records, or targets without addresses), the host's A records at the default
  port.

The queries go to `SIDECAR_DNS_SERVERS` when set (dnspython's asyncio resolver, to those servers only), else to
the system's resolver: SRV through dnspython with `/etc/resolv.conf`, A records through `getaddrinfo`, so that
`/etc/hosts` (docker and Kubernetes host aliases) names a gateway as it did before. Answers are cached for their
TTL. IPv4 only: `eph-gw-ip` keys are IPv4 addresses, and so are the native front's listeners in practice.

Failures are `LocateError` with the name and what went wrong in words (no such domain, no A record, no answer
from the DNS servers); they become the answer's reason (`send failed: cannot resolve ...`), never a crash.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

log = logging.getLogger(__name__)

SRV_PREFIX = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}
LIFETIME_S = 5.0  # one name's whole resolution, all its queries and retries
MAX_KNOWN_NAMES = 4096


class LocateError(OSError):
    """A SIP server's name did not resolve to any address."""


@dataclass(frozen=True, slots=True)
class Hop:
    """One address to try for a request: transport, IPv4 address and port, and the name it was found for.

    `name` is the host as configured (the domain, for SRV targets too: RFC 5922 checks a TLS server's
    certificate against it), so a TLS connection to the address sends it as SNI and verifies it.
    """

    transport: str
    address: str
    port: int
    name: str


def default_port(transport: str) -> int:
    return 5061 if transport == "tls" else 5060


def ip_literal(host: str) -> str | None:
    """The address when `host` is an IP literal (brackets allowed), else None."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def srv_order(records: Sequence[tuple[int, int, int, str]], rng: random.Random) -> list[tuple[int, str]]:
    """(port, target) of SRV records (priority, weight, port, target) in the order to try them (RFC 2782).

    Lowest priority first; within a priority, each next one drawn with a chance proportional to its weight
    (weight 0 has a small chance, as the RFC's running-sum selection gives it). A target "." (the service is
    not offered there) is left out.
    """
    ordered: list[tuple[int, str]] = []
    for priority in sorted({record[0] for record in records}):
        group = [r for r in records if r[0] == priority and r[3] not in (".", "")]
        group.sort(key=lambda r: r[1] != 0)  # zero weights first, as the RFC arranges them
        while group:
            total = sum(r[1] for r in group)
            pick = rng.randint(0, total)
            running = 0
            for index, record in enumerate(group):
                running += record[1]
                if running >= pick:
                    ordered.append((record[2], record[3]))
                    del group[index]
                    break
    return ordered


class SipLocator:
    """Resolves the next hops of outbound SIP requests (see the module's docstring)."""

    def __init__(self, nameservers: Sequence[tuple[str, int]] = (), rng: random.Random | None = None) -> None:
        self.nameservers = tuple(nameservers)
        self._rng = rng or random.Random()
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._no_system_config: str | None = None
        # Addresses found for names, so that a request pinned to an address (the digest retry, DRACHTIO.md 7.1)
        # still presents and verifies the name over TLS.
        self._names: dict[tuple[str, int], str] = {}
        self.queries = 0

    def _dns(self) -> dns.asyncresolver.Resolver | None:
        """dnspython's resolver: to the configured servers, else the system's (None if it has none)."""
        if self._resolver is not None or self._no_system_config is not None:
            return self._resolver
        if self.nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in self.nameservers]
        else:
            try:
                resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration as exc:
                self._no_system_config = str(exc) or "no nameservers"
                log.warning("no system DNS configuration: SRV records are not looked up error=%s", exc)
                return None
        resolver.lifetime = LIFETIME_S
        resolver.cache = dns.resolver.Cache()
        self._resolver = resolver
        return resolver

    async def hops(self, host: str, port: int | None, transport: str) -> list[Hop]:
        """The addresses to try, in order; raises `LocateError` when there are none."""
        transport = transport.lower()
        literal = ip_literal(host)
        if literal is not None:
            at = port or default_port(transport)
            return [Hop(transport, literal, at, self._names.get((literal, at), literal))]
        name = host.rstrip(".").lower()
        if port is None:
            found = await self._srv_hops(name, transport)
            if found:
                return self._remember(found)
        at = port or default_port(transport)
        return self._remember([Hop(transport, address, at, name) for address in await self._a_records(name, at)])

    async def addresses(self, host: str, port: int | None, transport: str) -> tuple[str, ...]:
        """The distinct IPv4 addresses a gateway is reached at (SPEC 4.4's `eph-gw-ip`); () when none."""
        try:
            found = await self.hops(host, port, transport)
        except LocateError as exc:
            log.info("gateway addresses not found host=%s error=%s", host, exc)
            return ()
        return tuple(dict.fromkeys(hop.address for hop in found if ":" not in hop.address))

    def _remember(self, found: list[Hop]) -> list[Hop]:
        for hop in found:
            if len(self._names) >= MAX_KNOWN_NAMES and (hop.address, hop.port) not in self._names:
                self._names.pop(next(iter(self._names)))
            self._names[(hop.address, hop.port)] = hop.name
        return found

    async def _srv_hops(self, name: str, transport: str) -> list[Hop]:
        resolver = self._dns()
        prefix = SRV_PREFIX.get(transport)
        if resolver is None or prefix is None:
            return []
        query = f"{prefix}.{name}."
        try:
            self.queries += 1
            answer = await resolver.resolve(query, "SRV", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []  # no SRV records: the host's A records (RFC 3263 4.2)
        except dns.exception.DNSException as exc:
            log.info("SRV lookup failed, trying A records name=%s error=%s", query, _in_words(exc))
            return []
        records = [(r.priority, r.weight, r.port, r.target.to_text(omit_final_dot=True)) for r in answer]
        found: list[Hop] = []
        for srv_port, target in srv_order(records, self._rng):
            literal = ip_literal(target)
            if literal is not None:
                found.append(Hop(transport, literal, srv_port, name))
                continue
            try:
                addresses = await self._a_records(target.lower(), srv_port)
            except LocateError as exc:
                log.info("SRV target without address name=%s target=%s error=%s", query, target, exc)
                continue
            found += [Hop(transport, address, srv_port, name) for address in addresses]
        return found

    async def _a_records(self, name: str, port: int) -> list[str]:
        if self.nameservers:
            resolver = self._dns()
            assert resolver is not None
            try:
                self.queries += 1
                answer = await resolver.resolve(f"{name}.", "A", search=False)
            except dns.exception.DNSException as exc:
                raise LocateError(f"cannot resolve {name}: {_in_words(exc)}") from exc
            return list(dict.fromkeys(r.address for r in answer))
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(LIFETIME_S):
                infos = await loop.getaddrinfo(name, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
        except TimeoutError as exc:
            raise LocateError(f"cannot resolve {name}: no answer from the DNS servers in {LIFETIME_S:g}s") from exc
        except OSError as exc:
            raise LocateError(f"cannot resolve {name}: {exc.strerror or exc}") from exc
        if not infos:
            raise LocateError(f"cannot resolve {name}: no address")
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _in_words(exc: dns.exception.DNSException) -> str:
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "no such domain (NXDOMAIN)"
    if isinstance(exc, dns.resolver.NoAnswer):
        return "no A record"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "the DNS servers failed to answer (SERVFAIL or refused)"
    if isinstance(exc, dns.exception.Timeout):
        return f"no answer from the DNS servers in {LIFETIME_S:g}s"
    return str(exc) or type(exc).__name__
