"""SPEC.md 1.2: drachtio hostport / localHostports → public and private addresses, sbc_addresses rows."""

from __future__ import annotations

import pytest

from ingest.fronts.drachtio.hostports import (
    HostPort,
    PublicSipAddresses,
    SbcAddressRecord,
    parse_hostports,
    parse_network_cidrs,
    private_sip_address,
    public_address_records,
    public_sip_addresses,
)

SPEC_EXAMPLE = "udp/3.1.2.3:5060,tcp/3.1.2.3:5060,tls/3.1.2.3:5061,wss/3.1.2.3:8443"
DOC_EXAMPLE = "udp/198.51.100.7:5060,tcp/198.51.100.7:5060"  # DRACHTIO.md 14.1
DEFAULT_CIDRS = parse_network_cidrs("192.168.0.0/24,172.16.0.0/16,10.0.0.0/8".split(","))


def test_parse_hostports_keeps_order_and_skips_junk() -> None:
    assert parse_hostports("tcp/127.0.0.1:5060,UDP/127.0.0.1:5060, bogus,udp/:5,tls/h:x") == [
        HostPort("tcp", "127.0.0.1", 5060),
        HostPort("udp", "127.0.0.1", 5060),
    ]
    assert parse_hostports("") == [] and parse_hostports(None) == []


def test_spec_example_gives_every_transport_but_tcp() -> None:
    assert public_sip_addresses(SPEC_EXAMPLE) == PublicSipAddresses(
        udp="3.1.2.3:5060", tls="3.1.2.3:5061", wss="3.1.2.3:8443"
    )


def test_tls_defaults_to_last_udp_ip_port_5061() -> None:
    assert public_sip_addresses(DOC_EXAMPLE) == PublicSipAddresses(
        udp="198.51.100.7:5060", tls="198.51.100.7:5061"
    )
    two_udp = "udp/3.1.2.3:5060,udp/4.4.4.4:5080,tcp/5.5.5.5:5060"
    assert public_sip_addresses(two_udp) == PublicSipAddresses(udp="4.4.4.4:5080", tls="4.4.4.4:5061")


def test_reported_tls_is_not_replaced_and_no_udp_means_no_default() -> None:
    assert public_sip_addresses("udp/3.1.2.3:5060,tls/3.1.2.3:5063").tls == "3.1.2.3:5063"
    assert public_sip_addresses("tcp/3.1.2.3:5060") == PublicSipAddresses()


def test_private_address_is_the_last_tcp_entry_inside_the_cidrs() -> None:
    local = "udp/10.0.0.5:5060,tcp/10.0.0.5:5060,tcp/172.16.4.4:5070,tcp/3.1.2.3:5060,udp/192.168.0.9:5060"
    assert private_sip_address(local, DEFAULT_CIDRS) == "172.16.4.4:5070"


def test_private_address_default_cidrs_are_narrower_than_rfc1918() -> None:
    assert private_sip_address("tcp/192.168.1.10:5060", DEFAULT_CIDRS) is None  # outside 192.168.0.0/24
    assert private_sip_address("tcp/172.20.0.2:5060", DEFAULT_CIDRS) is None  # outside 172.16.0.0/16
    assert private_sip_address("tcp/192.168.0.10:5060", DEFAULT_CIDRS) == "192.168.0.10:5060"


def test_private_address_with_configured_cidr_and_without_local_hostports() -> None:
    cidrs = parse_network_cidrs(["172.39.0.0/16"])
    assert private_sip_address("tcp/172.39.0.10:5060,tcp/10.1.1.1:5060", cidrs) == "172.39.0.10:5060"
    assert private_sip_address(None, cidrs) is None
    assert private_sip_address("udp/172.39.0.10:5060", cidrs) is None  # only tcp counts


def test_parse_network_cidrs_allows_host_bits_and_rejects_garbage() -> None:
    assert [str(n) for n in parse_network_cidrs([" 10.1.2.3/8 ", "", "fd00::/8"])] == [
        "10.0.0.0/8",
        "fd00::/8",
    ]
    with pytest.raises(ValueError):
        parse_network_cidrs(["10.0.0.0/33"])


def test_public_records_per_ip_drop_rfc1918() -> None:
    hostport = (
        "udp/3.1.2.3:5060,tcp/3.1.2.3:5060,tls/3.1.2.3:5061,wss/3.1.2.3:8443,"
        "udp/10.0.0.5:5060,udp/172.31.9.9:5060,udp/192.168.50.1:5060,udp/172.32.0.1:5060,wss/52.0.0.1:443"
    )
    assert public_address_records(hostport) == [
        SbcAddressRecord(ipv4="3.1.2.3", port=5060, tls_port=5061, wss_port=8443),
        SbcAddressRecord(ipv4="172.32.0.1", port=5060),
        SbcAddressRecord(ipv4="52.0.0.1", wss_port=443),
    ]


def test_public_records_do_not_get_the_tls_default_and_ignore_tcp() -> None:
    assert public_address_records(DOC_EXAMPLE) == [SbcAddressRecord(ipv4="198.51.100.7", port=5060)]
    assert public_address_records("tcp/3.1.2.3:5060") == []


def test_private_only_drachtio_publishes_nothing() -> None:
    assert public_address_records("udp/10.0.0.10:5060,udp/192.168.7.7:5060,wss/172.16.0.1:8443") == []


def test_rfc1918_edges() -> None:
    # 172.16.0.0/12 ends at 172.31.255.255; SPEC 6's testbed net 172.39.0.0/16 is public by this rule
    hostport = "udp/172.15.255.255:5060,udp/172.31.255.255:5060,udp/172.39.0.10:5060,udp/11.0.0.1:5060"
    assert [record.ipv4 for record in public_address_records(hostport)] == [
        "172.15.255.255",
        "172.39.0.10",
        "11.0.0.1",
    ]
