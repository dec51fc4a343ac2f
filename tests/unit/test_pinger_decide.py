"""The pinger's pure parts: targets from rows (SPEC 4.6), answers to facts with several SBCs, the alerts."""

from __future__ import annotations

from datetime import timedelta

import pytest

from events import (
    GatewayPingAnswered,
    GatewayPingDisabled,
    GatewayPingFailed,
    GatewayPingSucceeded,
    PingedGateway,
    stamp,
)
from processors.pinger import PeerAnswer, PingPolicy, decide_answer, plan_pings, target_of
from projections.gateway_blacklist import alert_line, alert_message, blacklist_writes

ROW: dict[str, object] = {
    "sip_gateway_sid": "g1",
    "voip_carrier_sid": "c1",
    "ipv4": "203.0.113.10",
    "port": 5070,
    "protocol": "udp",
    "use_sips_scheme": 0,
    "carrier_sid": "c1",
    "carrier_name": "One",
    "account_sid": "a1",
    "service_provider_sid": "sp1",
}
POLICY = PingPolicy(interval_s=60, blacklist_ttl_s=300, remove_codes=frozenset({503}))
GATEWAY = target_of(ROW).gateway


@pytest.mark.parametrize(
    ("changes", "request_uri", "next_hop"),
    [
        ({}, "sip:203.0.113.10:5070", "sip:203.0.113.10:5070;transport=udp"),
        ({"port": None}, "sip:203.0.113.10", "sip:203.0.113.10;transport=udp"),
        ({"ipv4": "gw.example.com"}, "sip:gw.example.com:5070", "sip:gw.example.com:5070;transport=udp"),
        ({"ipv4": "gw.example.com", "port": None}, "sip:gw.example.com", "sip:gw.example.com;transport=udp"),
        ({"protocol": "tls/srtp", "use_sips_scheme": 1}, "sips:203.0.113.10", "sip:203.0.113.10:5070;transport=tls"),
        ({"protocol": "tls", "use_sips_scheme": 0}, "sip:203.0.113.10:5070", "sip:203.0.113.10:5070;transport=tls"),
        ({"protocol": "tcp", "use_sips_scheme": 1}, "sip:203.0.113.10:5070", "sip:203.0.113.10:5070;transport=tcp"),
    ],
)
def test_target_of_row(changes: dict[str, object], request_uri: str, next_hop: str) -> None:
    target = target_of({**ROW, **changes})
    assert (target.request_uri, target.next_hop) == (request_uri, next_hop)


def test_label_and_missing_carrier() -> None:
    assert GATEWAY.label == "203.0.113.10:5070;transport=udp"
    assert target_of({**ROW, "protocol": "tls/srtp", "port": None}).gateway.label == "203.0.113.10;transport=tls/srtp"
    orphan = target_of({**ROW, "carrier_sid": None, "carrier_name": None, "account_sid": None})
    assert not orphan.gateway.carrier_found and orphan.gateway.account_sid is None


def test_plan_addresses_own_edge_with_deadline_and_timeout() -> None:
    [command] = plan_pings([ROW], PingPolicy(interval_s=5), now_ms=1_000, edge_id="sbc-a")
    assert command.edge_id == "sbc-a"
    assert command.deadline_ms == 6_000
    assert command.timeout_ms == 5_000  # shorter than Timer F: the ping is over before the next round
    assert PingPolicy(interval_s=60).timeout_ms == 32_000


def answer(status: int, edge: str = "sbc-a", error: str | None = None) -> GatewayPingAnswered:
    return GatewayPingAnswered(**stamp(), gateway=GATEWAY, edge_id=edge, status=status, error=error)


def at(event: GatewayPingAnswered, seconds_ago: float) -> PeerAnswer:
    return PeerAnswer(200, int((event.occurred_at - timedelta(seconds=seconds_ago)).timestamp() * 1000))


def test_one_sbc_is_the_original() -> None:
    [ok] = decide_answer(answer(200), blacklisted=True, peers={}, policy=POLICY)
    assert isinstance(ok, GatewayPingSucceeded) and ok.cleared
    [ok] = decide_answer(answer(200), blacklisted=False, peers={}, policy=POLICY)
    assert isinstance(ok, GatewayPingSucceeded) and not ok.cleared
    [failed] = decide_answer(answer(408), blacklisted=False, peers={}, policy=POLICY)
    assert isinstance(failed, GatewayPingFailed) and failed.blacklisted and failed.ttl_s == 300
    [again] = decide_answer(answer(408), blacklisted=True, peers={}, policy=POLICY)
    assert isinstance(again, GatewayPingFailed) and not again.blacklisted  # no new alert, no TTL refresh


def test_remove_code_disables_even_when_blacklisted() -> None:
    failed, disabled = decide_answer(answer(503), blacklisted=True, peers={}, policy=POLICY)
    assert isinstance(failed, GatewayPingFailed) and not failed.blacklisted
    assert isinstance(disabled, GatewayPingDisabled) and disabled.status == 503


def test_another_sbc_reaching_the_gateway_keeps_it_off_the_blacklist() -> None:
    mine = answer(408, edge="sbc-b")
    peers = {"sbc-a": at(mine, 30), "sbc-b": PeerAnswer(200, 0)}  # my own older answer does not count
    [failed] = decide_answer(mine, blacklisted=False, peers=peers, policy=POLICY)
    assert isinstance(failed, GatewayPingFailed)
    assert not failed.blacklisted and failed.reachable_from == ("sbc-a",)


def test_a_stale_or_failing_peer_does_not_count() -> None:
    mine = answer(408, edge="sbc-b")
    stale = at(mine, POLICY.fresh_ms / 1000 + 1)
    failing = PeerAnswer(503, stale.at_ms + 10_000)
    for peers in ({"sbc-a": stale}, {"sbc-a": failing}):
        [failed] = decide_answer(mine, blacklisted=False, peers=peers, policy=POLICY)
        assert isinstance(failed, GatewayPingFailed) and failed.blacklisted and failed.reachable_from == ()


def test_peer_answer_codec() -> None:
    assert PeerAnswer.decode(PeerAnswer(200, 17).encode()) == PeerAnswer(200, 17)
    assert PeerAnswer.decode(b"junk") is None


def test_alerts_and_writes() -> None:
    failed = GatewayPingFailed(**stamp(), gateway=GATEWAY, edge_id="sbc-a", status=503, blacklisted=True, ttl_s=300)
    assert alert_message(failed) == "Options ping 203.0.113.10:5070;transport=udp unsuccessfully, received: 503"
    assert blacklist_writes(failed) == [("SETEX", "blacklist-sip-gateway:g1", 300, 1)]
    line = alert_line(failed)
    assert line is not None and line.startswith("alerts,account_sid=a1,service_provider_sid=sp1 message=")
    errored = GatewayPingFailed(
        **stamp(), gateway=GATEWAY, edge_id="sbc-a", status=0, error="the SIP front is not ready", blacklisted=True
    )
    assert alert_message(errored) == (
        "Options ping 203.0.113.10:5070;transport=udp unsuccessfully, error: the SIP front is not ready"
    )
    quiet = GatewayPingFailed(**stamp(), gateway=GATEWAY, edge_id="sbc-a", status=503)
    assert alert_message(quiet) is None and blacklist_writes(quiet) == []
    disabled = GatewayPingDisabled(**stamp(), gateway=GATEWAY, edge_id="sbc-a", status=503)
    assert alert_message(disabled) == "Disabling Options ping for 203.0.113.10 in carrier One:c1 due to 503"
    succeeded = GatewayPingSucceeded(**stamp(), gateway=GATEWAY, edge_id="sbc-a")
    assert blacklist_writes(succeeded) == [("DEL", "blacklist-sip-gateway:g1")]
    orphan = PingedGateway(sip_gateway_sid="g1", voip_carrier_sid="c1", ipv4="203.0.113.10", carrier_found=False)
    assert alert_line(GatewayPingDisabled(**stamp(), gateway=orphan, edge_id="sbc-a", status=503)) is None
