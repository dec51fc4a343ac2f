"""The regbot's pure parts: targets from rows (SPEC 4.2/4.3), answers to facts (4.4), the digest, sealing."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from events import (
    CarrierDeactivated,
    CarrierRegistered,
    CarrierRegisterFailed,
    CarrierRegistrationDisabled,
    OutboundRegisterAnswered,
    stamp,
)
from ingest.outbound import digest_authorization, edge_hostport
from ingest.sip.digest import parse_digest_params
from processors.regbot import Carrier, Gateway, GatewayState, Policy, decide_answer, is_due, plan, target_of
from processors.regbot.targets import Skipped, Target
from runtime.sealed import Sealer, SealError

CARRIER = Carrier(
    voip_carrier_sid="c1",
    name="One",
    requires_register=True,
    register_username="u",
    register_password="p",
    register_sip_realm="sip.carrier.example",
)
GATEWAY = Gateway(sip_gateway_sid="g1", voip_carrier_sid="c1", ipv4="203.0.113.10", port=5070)


def test_target_shape() -> None:
    target = target_of(CARRIER, GATEWAY, None, None, contact_use_ip=False, expires_s=3600)
    assert isinstance(target, Target)
    assert target.request_uri == "sip:sip.carrier.example"
    assert target.next_hop == "sip:203.0.113.10:5070;transport=udp"
    assert target.from_uri == "sip:u@sip.carrier.example"
    assert target.contact == "<sip:u@sip.carrier.example;transport=udp>;expires=3600"
    hostname = Gateway(sip_gateway_sid="g2", voip_carrier_sid="c1", ipv4="gw.example", port=5070, protocol="tls/srtp")
    other = target_of(CARRIER, hostname, "acct.realm", "sys.domain", contact_use_ip=True, expires_s=60)
    assert isinstance(other, Target)
    assert other.next_hop == "sip:gw.example:5070;transport=tls"  # a port given: A records at that port
    no_port = target_of(CARRIER, replace(hostname, port=None), None, None, contact_use_ip=False, expires_s=60)
    assert isinstance(no_port, Target) and no_port.next_hop == "sip:gw.example;transport=tls"  # SRV
    assert other.contact == "<sip:u@localhost;transport=tls>;expires=60"


def test_plan_filters_dedups_and_rejects_bad_from_domain() -> None:
    no_password = Carrier(voip_carrier_sid="c2", name="Two", requires_register=True, register_username="u")
    bad = Carrier(
        voip_carrier_sid="c3",
        name="Three",
        requires_register=True,
        register_password="x",
        register_from_domain="sip:1.2.3.4",
    )
    gateways = [
        GATEWAY,
        Gateway(sip_gateway_sid="g1b", voip_carrier_sid="c1", ipv4="203.0.113.10", port=5080),  # same credentials
        Gateway(sip_gateway_sid="g2", voip_carrier_sid="c2", ipv4="198.51.100.1"),
        Gateway(sip_gateway_sid="g3", voip_carrier_sid="c3", ipv4="198.51.100.2"),
        Gateway(sip_gateway_sid="g4", voip_carrier_sid="c1", ipv4="198.51.100.3", outbound=False),
    ]
    result = plan([CARRIER, no_password, bad], gateways, {}, None, contact_use_ip=False, expires_s=3600)
    assert [t.gateway.sip_gateway_sid for t in result.targets] == ["g1"]
    reasons = {s.gateway.sip_gateway_sid: s for s in result.skipped}
    assert set(reasons) == {"g1b", "g2", "g3"}
    assert isinstance(reasons["g3"], Skipped) and reasons["g3"].write_status
    assert reasons["g3"].reason == "Invalid from_domain sip:1.2.3.4"


def state(**changes: object) -> GatewayState:
    base = GatewayState(
        sip_gateway_sid="g1", voip_carrier_sid="c1", carrier_name="One", status="pending", attempt_id="a1", cseq=2
    )
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def answer(status: int, **more: object) -> OutboundRegisterAnswered:
    return OutboundRegisterAnswered(
        **stamp(),
        attempt_id="a1",
        voip_carrier_sid="c1",
        sip_gateway_sid="g1",
        status=status,
        reason=f"{status} X",
        call_id="g1",
        first_cseq=1,
        last_cseq=2,
        **more,  # type: ignore[arg-type]
    )


def test_200_refreshes_at_half_the_grant_contact_expires_wins_and_floor() -> None:
    policy = Policy(min_expires_s=30)
    new, facts = decide_answer(state(), answer(200, expires_header=120, contact_expires=60), policy, 1_000_000)
    assert isinstance(facts[0], CarrierRegistered) and facts[0].expires_s == 60
    assert new.next_at_ms == 1_000_000 + 30_000 and new.status == "registered"
    _, facts = decide_answer(state(), answer(200, expires_header=10), policy, 0)
    assert facts[0].expires_s == 30  # type: ignore[attr-defined]


def test_failures_count_only_remove_codes_and_the_threshold_stops() -> None:
    policy = Policy(remove_codes=frozenset({403}), failure_threshold=2, failure_retry_interval_s=300)
    s1, facts = decide_answer(state(), answer(503), policy, 0)
    assert isinstance(facts[0], CarrierRegisterFailed) and s1.remove_failures == 0 and s1.next_at_ms == 300_000
    s2, _ = decide_answer(state(remove_failures=1), answer(403), policy, 0)
    assert s2.status == "stopped" and s2.next_at_ms is None
    _, facts = decide_answer(state(remove_failures=1), answer(403), policy, 0)
    assert isinstance(facts[1], CarrierRegistrationDisabled)
    _, facts = decide_answer(state(remove_failures=1, trunk_type="reg"), answer(403), policy, 0)
    assert isinstance(facts[1], CarrierDeactivated)
    assert not is_due(s2, "", 10**12, policy)


def test_an_answer_to_a_retired_attempt_is_ignored() -> None:
    same, facts = decide_answer(state(attempt_id="other"), answer(200), Policy(), 0)
    assert facts == [] and same.attempt_id == "other"


def test_digest_matches_drachtio_worked_example() -> None:
    value = digest_authorization(
        'Digest realm="carrier.example", nonce="7d9e1f", algorithm=MD5, qop="auth"',
        method="REGISTER",
        uri="sip:sip.carrier.example",
        username="4415550100",
        password="s3cret",
        cnonce="9b8c7d6e",
    )
    assert parse_digest_params(value)["response"] == "d4bc7d106f17210361a734976a09dbd1"  # DRACHTIO.md 14.7
    ha1 = hashlib.md5(b"u:r:p").hexdigest()
    bare = parse_digest_params(
        digest_authorization(
            'Digest realm="r", nonce="n", opaque="o"',
            method="REGISTER",
            uri="sip:r",
            username="u",
            password="p",
            cnonce="c",
        )
    )
    assert bare["response"] == hashlib.md5(f"{ha1}:n:{hashlib.md5(b'REGISTER:sip:r').hexdigest()}".encode()).hexdigest()
    assert bare["opaque"] == "o" and "qop" not in bare


def test_edge_address_and_sealing() -> None:
    assert edge_hostport("udp/10.0.0.1:5060,tcp/10.0.0.1:5062", "tcp") == "10.0.0.1:5062"
    assert edge_hostport("udp/10.0.0.1:5060", "tls") == "10.0.0.1:5061"
    sealed = Sealer("secret").seal("pw")
    assert "pw" not in sealed and Sealer("secret").open(sealed) == "pw"
    with pytest.raises(SealError):
        Sealer("other").open(sealed)
