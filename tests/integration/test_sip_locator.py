"""Locating SIP servers (ingest/locator.py) against a real DNS server on loopback: SRV by transport, priority
and weight, A records for a hostname with a port, the A fallback, and failures in words."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ingest.locator import Hop, LocateError, SipLocator, srv_order
from tests.dnsserver import dns_server

RECORDS = {
    ("_sip._udp.carrier.test", "SRV"): ["10 0 5070 sip-a.carrier.test.", "20 0 5080 sip-b.carrier.test."],
    ("_sip._tcp.carrier.test", "SRV"): ["10 0 5071 sip-a.carrier.test."],
    ("_sips._tcp.carrier.test", "SRV"): ["10 0 5072 sip-b.carrier.test."],
    ("sip-a.carrier.test", "A"): ["127.0.0.11", "127.0.0.12"],
    ("sip-b.carrier.test", "A"): ["127.0.0.21"],
    ("plain.test", "A"): ["127.0.0.31"],
    ("broken.test", "SRV"): ["10 0 5060 gone.broken.test."],
    ("broken.test", "A"): ["127.0.0.41"],
    ("srv-only.test", "SRV"): ["10 0 5060 sip-b.carrier.test."],
}


async def test_srv_records_by_transport_in_priority_order_then_each_targets_a_records() -> None:
    async with dns_server(RECORDS) as (server, port):
        locator = SipLocator([("127.0.0.1", port)])
        udp = await locator.hops("carrier.test", None, "udp")
        tcp = await locator.hops("carrier.test", None, "tcp")
        tls = await locator.hops("Carrier.Test.", None, "tls")
    # priority 10's target (its two A records, in the order DNS gave them), then priority 20's
    assert {*udp[:2]} == {Hop("udp", f"127.0.0.{n}", 5070, "carrier.test") for n in (11, 12)}
    assert udp[2:] == [Hop("udp", "127.0.0.21", 5080, "carrier.test")]
    assert sorted((h.address, h.port) for h in tcp) == [("127.0.0.11", 5071), ("127.0.0.12", 5071)]
    assert tls == [Hop("tls", "127.0.0.21", 5072, "carrier.test")]  # the TLS name is the domain (RFC 5922)
    assert server.asked("SRV") == ["_sip._udp.carrier.test", "_sip._tcp.carrier.test", "_sips._tcp.carrier.test"]


async def test_a_hostname_with_a_port_is_looked_up_with_a_records_only() -> None:
    async with dns_server(RECORDS) as (server, port):
        locator = SipLocator([("127.0.0.1", port)])
        udp = await locator.hops("sip-a.carrier.test", 5090, "udp")
        tcp = await locator.hops("plain.test", 5091, "tcp")
    assert sorted((h.address, h.port) for h in udp) == [("127.0.0.11", 5090), ("127.0.0.12", 5090)]
    assert tcp == [Hop("tcp", "127.0.0.31", 5091, "plain.test")]
    assert server.asked("SRV") == []  # RFC 3263: a port given, no SRV
    assert server.asked("A") == ["sip-a.carrier.test", "plain.test"]


async def test_no_srv_records_falls_back_to_a_records_at_the_default_port() -> None:
    async with dns_server(RECORDS) as (server, port):
        locator = SipLocator([("127.0.0.1", port)])
        udp = await locator.hops("plain.test", None, "udp")
        tls = await locator.hops("plain.test", None, "tls")
        broken = await locator.hops("broken.test", None, "udp")  # its one SRV target has no address
    assert udp == [Hop("udp", "127.0.0.31", 5060, "plain.test")]
    assert tls == [Hop("tls", "127.0.0.31", 5061, "plain.test")]
    assert broken == [Hop("udp", "127.0.0.41", 5060, "broken.test")]
    assert server.asked("SRV") == ["_sip._udp.plain.test", "_sips._tcp.plain.test", "_sip._udp.broken.test"]


async def test_a_name_that_does_not_resolve_is_a_locate_error_in_words() -> None:
    async with dns_server(RECORDS) as (_, port):
        locator = SipLocator([("127.0.0.1", port)])
        with pytest.raises(LocateError, match=r"^cannot resolve nowhere\.test: no such domain \(NXDOMAIN\)$"):
            await locator.hops("nowhere.test", None, "udp")
        with pytest.raises(LocateError, match=r"^cannot resolve srv-only\.test: no A record$"):
            await locator.hops("srv-only.test", 5060, "udp")  # it has SRV records only
        assert await locator.addresses("nowhere.test", None, "udp") == ()


async def test_an_ip_literal_needs_no_lookup_and_a_pinned_address_keeps_its_name() -> None:
    async with dns_server(RECORDS) as (server, port):
        locator = SipLocator([("127.0.0.1", port)])
        assert await locator.hops("192.0.2.7", None, "tls") == [Hop("tls", "192.0.2.7", 5061, "192.0.2.7")]
        assert server.questions == []
        await locator.hops("carrier.test", None, "tls")
        # the digest retry goes to the challenger's address (DRACHTIO.md 7.1): TLS still names the domain
        assert await locator.hops("127.0.0.21", 5072, "tls") == [Hop("tls", "127.0.0.21", 5072, "carrier.test")]
        addresses = await locator.addresses("carrier.test", None, "udp")
        assert sorted(addresses) == ["127.0.0.11", "127.0.0.12", "127.0.0.21"]


async def test_the_system_resolver_reads_etc_hosts() -> None:
    hops = await SipLocator().hops("localhost", 5080, "udp")
    assert Hop("udp", "127.0.0.1", 5080, "localhost") in hops


def test_srv_weights_share_one_priority_by_their_weight() -> None:
    rng = random.Random(7)
    records = [(10, 90, 5060, "heavy."), (10, 10, 5060, "light."), (5, 0, 5060, "first."), (10, 0, 5060, ".")]
    firsts: Counter[str] = Counter()
    for _ in range(2000):
        order = srv_order(records, rng)
        assert order[0] == (5060, "first.")  # the lower priority number always first
        assert sorted(target for _, target in order[1:]) == ["heavy.", "light."]  # "." is not a target
        firsts[order[1][1]] += 1
    assert 0.85 < firsts["heavy."] / 2000 < 0.95  # 90 of 100 by weight
