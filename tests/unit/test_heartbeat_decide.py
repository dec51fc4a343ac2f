"""The heartbeat decision (SPEC 3) as a table of pure cases, and the servers projection mapping."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import (
    OptionsReceived,
    ReplyIssued,
    ServerCheckedIn,
    ServerExpired,
    ServerLeft,
    StreamNames,
    stamp,
)
from processors.heartbeat.decide import decide, failed, server_kind
from projections.servers import Membership, ip_key, is_drained, member_ips, writes_for

NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
NAMES = StreamNames("c1")


def options(ip: str = "10.0.0.20", port: int = 5060, *, fs: str | None = None, rtp: str | None = None,
            url: str | None = None) -> OptionsReceived:
    return OptionsReceived(**stamp("corr-1"), reply_to="ingest-a", call_id="cid", source_ip=ip,
                           source_port=port, transport="udp", fs_status=fs, rtp_status=rtp,
                           fs_service_url=url)


def run(event: OptionsReceived, membership: Membership | None = None, drained: frozenset[str] = frozenset()):
    return decide(event, cause_id="1-0", membership=membership or Membership(), drained_ips=drained, now=NOW)


def members_header(reply: ReplyIssued) -> str | None:
    return dict(reply.headers).get("X-Members")


def test_plain_options_gets_200_without_x_members_and_no_fact():
    decision = run(options())
    assert decision.fact is None
    assert (decision.reply.status, decision.reply.reason) == (200, "OK")
    assert members_header(decision.reply) is None
    assert decision.reply.correlation_id == "corr-1" and decision.reply.causation_id == "1-0"


def test_fs_open_checks_in_ip_port_member():
    decision = run(options(fs="open", url="http://10.0.0.20:3000"))
    fact = decision.fact
    assert isinstance(fact, ServerCheckedIn)
    assert (fact.kind, fact.member, fact.ip, fact.port) == ("fs", "10.0.0.20:5060", "10.0.0.20", 5060)
    assert fact.service_url == "http://10.0.0.20:3000"
    assert fact.occurred_at == NOW and fact.correlation_id == "corr-1" and fact.causation_id == "1-0"
    assert members_header(decision.reply) == "1"


def test_rtp_open_checks_in_bare_ip_member():
    fact = run(options(rtp="open")).fact
    assert isinstance(fact, ServerCheckedIn)
    assert (fact.kind, fact.member) == ("rtp", "10.0.0.20")


def test_rtp_status_wins_over_fs_status():
    event = options(fs="open", rtp="closed")
    assert server_kind(event) == "rtp"
    fact = run(event, Membership({"rtp": ["10.0.0.20"], "fs": ["10.0.0.20:5060"]})).fact
    assert isinstance(fact, ServerLeft)
    assert (fact.kind, fact.member, fact.status) == ("rtp", "10.0.0.20", "closed")


@pytest.mark.parametrize("status", ["closed", "Open", "OPEN", "draining", ""])
def test_any_status_but_exactly_open_leaves(status: str):
    decision = run(options(fs=status), Membership({"fs": ["10.0.0.20:5060", "10.0.0.21:5060"]}))
    fact = decision.fact
    assert isinstance(fact, ServerLeft)
    assert (fact.status, fact.drained) == (status, False)
    assert members_header(decision.reply) == "1"


def test_drained_feature_server_open_is_forced_closed():
    decision = run(options(fs="open", url="http://u"), Membership({"fs": ["10.0.0.20:5060"]}),
                   drained=frozenset({"10.0.0.20"}))
    fact = decision.fact
    assert isinstance(fact, ServerLeft)
    assert (fact.status, fact.drained, fact.member, fact.service_url) == ("closed", True, "10.0.0.20:5060", "http://u")
    assert members_header(decision.reply) == "0"


def test_drain_applies_to_feature_servers_only():
    fact = run(options(rtp="open"), drained=frozenset({"10.0.0.20"})).fact
    assert isinstance(fact, ServerCheckedIn)


def test_drain_of_another_ip_does_not_apply():
    fact = run(options(fs="open"), drained=frozenset({"10.0.0.21"})).fact
    assert isinstance(fact, ServerCheckedIn)


def test_drain_matches_ipv6_in_any_spelling():
    event = options("2001:0db8:0000::0001", 5080, fs="open")
    fact = run(event, drained=frozenset({ip_key("2001:db8::1")})).fact
    assert isinstance(fact, ServerLeft) and fact.drained
    assert fact.member == "2001:0db8:0000::0001:5080"  # the set member keeps jambonz's format


def test_closed_from_a_drained_server_is_not_marked_drained():
    fact = run(options(fs="closed"), drained=frozenset({"10.0.0.20"})).fact
    assert isinstance(fact, ServerLeft) and not fact.drained


def test_empty_service_url_is_ignored():
    fact = run(options(fs="open", url="")).fact
    assert isinstance(fact, ServerCheckedIn) and fact.service_url is None


@pytest.mark.parametrize(
    ("before", "event", "expected"),
    [
        ({"fs": []}, options(fs="open"), "1"),
        ({"fs": ["10.0.0.20:5060"]}, options(fs="open"), "1"),  # a repeated check-in is not counted twice
        ({"fs": ["10.0.0.21:5060"]}, options(fs="open"), "2"),
        ({"fs": ["10.0.0.20:5060", "10.0.0.21:5060"]}, options(fs="closed"), "1"),
        ({"fs": ["10.0.0.21:5060"]}, options(fs="closed"), "1"),  # leaving when not a member
        ({"fs": ["10.0.0.20:5060"], "rtp": ["10.0.0.20", "10.0.0.21"]}, options(rtp="open"), "2"),
        ({"fs": ["10.0.0.20:5060", "10.0.0.21:5060"], "rtp": []}, options(rtp="open"), "1"),  # its own set
        ({"fs": ["10.0.0.20:5061"]}, options(fs="open"), "2"),  # another port is another member
    ],
)
def test_x_members_counts_the_set_after_the_change(before, event, expected):
    assert members_header(run(event, Membership(before)).reply) == expected


def test_failed_answer_is_503_on_the_same_story():
    reply = failed(options(fs="open"), cause_id="9-1", now=NOW)
    assert (reply.status, reply.headers) == (503, [])
    assert (reply.causation_id, reply.correlation_id) == ("9-1", "corr-1")


def test_membership_applies_facts_in_order():
    membership = Membership()
    for status, expected in [("open", 1), ("open", 1), ("closed", 0)]:
        fact = run(options(fs=status, url="http://u"), membership).fact
        assert fact is not None
        membership.apply(fact)
        assert membership.count("fs") == expected
        assert membership.count("service-url") == expected


def test_writes_for_check_in_adds_member_url_and_last_seen():
    fact = run(options(fs="open", url="http://u")).fact
    assert fact is not None
    assert writes_for(fact, NAMES) == [
        ("SADD", "c1:active-fs", "10.0.0.20:5060"),
        ("ZADD", NAMES.server_last_seen("fs"), "GT", NOW_MS, "10.0.0.20:5060"),
        ("SADD", "c1:fs-service-url", "http://u"),
        ("ZADD", NAMES.server_last_seen("service-url"), "GT", NOW_MS, "http://u"),
    ]


def test_writes_for_leaving_and_expiry_remove_member_and_last_seen():
    left = run(options(rtp="closed")).fact
    assert left is not None
    assert writes_for(left, NAMES) == [("SREM", "c1:active-rtp", "10.0.0.20"),
                                       ("ZREM", NAMES.server_last_seen("rtp"), "10.0.0.20")]
    expired = ServerExpired(**stamp(), kind="service-url", member="http://u", last_seen_ms=1)
    assert writes_for(expired, NAMES) == [("SREM", "c1:fs-service-url", "http://u"),
                                          ("ZREM", NAMES.server_last_seen("service-url"), "http://u")]


@pytest.mark.parametrize(
    ("member", "drained", "expected"),
    [
        ("192.168.1.11:5060", {"192.168.1.11"}, True),
        ("192.168.1.11", {"192.168.1.11"}, True),  # jambonz's own tests seed bare IPs
        ("192.168.1.10:5060", {"192.168.1.11"}, False),
        ("192.168.1.111:5060", {"192.168.1.11"}, False),
        ("::1:5060", {"::1"}, True),
        ("2001:db8::1:5060", {ip_key("2001:0db8::1")}, True),
    ],
)
def test_drained_ips_match_ip_port_members(member: str, drained: set[str], expected: bool):
    assert is_drained(member, drained) is expected


@given(st.ip_addresses(), st.integers(min_value=1, max_value=65535))
def test_member_ips_include_the_source_ip(address, port):
    assert ip_key(str(address)) in member_ips(f"{address}:{port}")
