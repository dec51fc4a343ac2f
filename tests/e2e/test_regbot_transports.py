"""Outbound registration over TCP and TLS, to gateways named by DNS (and past a target that never answers), and
the refresh of a short grant.

sipp plays the carrier's registrar over UDP and TCP; over TLS a registrar written in the test (tests/sipserver.py)
does, because Debian's sipp is built without OpenSSL. DNS is a real server on loopback (tests/dnsserver.py) that
the service is pointed at with SIDECAR_DNS_SERVERS. The regbot reads the carriers from MariaDB, the native front
sends, and the tests check what the registrar received.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis

from events import CarrierRegistered, CarrierRegisterFailed, OutboundRegisterAnswered, default_codec
from ingest import outbound
from ingest.sip.digest import parse_digest_params
from tests.certs import self_signed
from tests.conftest import free_port
from tests.dnsserver import dns_server
from tests.e2e.conftest import start_sidecar, stop_sidecar
from tests.e2e.test_regbot import (
    FAST,
    PASSWORD,
    USERNAME,
    Seen,
    carrier_row,
    eventually,
    md5,
    received_registers,
    seed_carrier,
    uas,
)
from tests.sipserver import carrier_server


class SilentUdp(asyncio.DatagramProtocol):
    """A bound UDP port that reads and never answers: what arrived, with when (local time, as sipp logs it)."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[datetime, str]] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.arrivals.append((datetime.now(), data.decode()))


def sipp_sent(messages: str, status_line: str) -> list[datetime]:
    """When sipp sent each message that starts with `status_line` (from its -trace_msg log)."""
    sent = []
    for block in re.split(r"^-{20,} ", messages, flags=re.MULTILINE):
        head, _, rest = block.partition("\n")
        kind, _, text = rest.partition("\n")
        if "message sent" in kind and text.lstrip("\r\n").startswith(status_line):
            sent.append(datetime.strptime(head.strip()[:26], "%Y-%m-%d %H:%M:%S.%f"))
    return sent


async def register_status(database: str, carrier_sid: str) -> dict[str, object] | None:
    raw = (await carrier_row(database, carrier_sid))["register_status"]
    return json.loads(str(raw)) if raw else None


def check_digest(authorization: str | None) -> None:
    """The Authorization of the REGISTER retry answers sipp's challenge (realm carrier.test, qop=auth)."""
    credentials = parse_digest_params(authorization or "")
    assert credentials["username"] == USERNAME and credentials["realm"] == "carrier.test"
    assert credentials["uri"] == "sip:carrier.test" and credentials["qop"] == "auth" and credentials["nc"] == "00000001"
    ha1, ha2 = md5(f"{USERNAME}:carrier.test:{PASSWORD}"), md5("REGISTER:sip:carrier.test")
    expected = md5(f"{ha1}:{credentials['nonce']}:00000001:{credentials['cnonce']}:auth:{ha2}")
    assert credentials["response"] == expected


async def test_register_over_tcp_with_digest(
    cluster_id: str, mysql_db: str, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    carrier = await seed_carrier(mysql_db, port, protocol="tcp", trunk_type="static_ip")
    sipp = uas("uas-carrier-challenge.xml", port, {"GRANT": "3600"}, timeout_s=40, transport="t1")
    await asyncio.sleep(0.3)
    sidecar = await start_sidecar(cluster_id, mysql_db, env=FAST)
    try:
        result = await asyncio.wait_for(sipp, 50)
        assert result.returncode == 0, result.stderr + result.messages[-3000:]
        assert "TCP message received" in result.messages
        first, authed = received_registers(result.messages)
        assert first.text.startswith("REGISTER sip:carrier.test SIP/2.0")
        for register in (first, authed):
            via = register.header("Via") or ""
            assert via.startswith(f"SIP/2.0/TCP 127.0.0.1:{sidecar.tcp_port};branch=z9hG4bK"), via
            assert register.header("Contact") == f"<sip:{USERNAME}@carrier.test;transport=tcp>;expires=3600"
            assert register.header("Call-ID") == carrier.gateway_sid
        assert first.header("Authorization") is None and first.header("From") == authed.header("From")
        cseq = int((first.header("CSeq") or "").split()[0])
        assert authed.header("CSeq") == f"{cseq + 1} REGISTER"
        check_digest(authed.header("Authorization"))

        async def registered() -> dict[str, object] | None:
            status = await register_status(mysql_db, carrier.carrier_sid)
            return status if status and status["status"] == "ok" else None

        status = await eventually(registered)
        assert status["reason"] == "200 OK" and status["expires"] == 3600
        with capsys.disabled():
            print("\n--- sipp (carrier over TCP) transcript ---\n" + result.messages)
    finally:
        await stop_sidecar(sidecar)


async def test_register_and_gateway_ping_over_tls(
    cluster_id: str, mysql_db: str, redis: Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sbc_cert, sbc_key = self_signed(tmp_path)
    tls_files = self_signed(tmp_path, ("carrier.test", "127.0.0.1"))
    async with carrier_server(realm="carrier.test", username=USERNAME, password=PASSWORD, tls=tls_files) as server:
        carrier = await seed_carrier(
            mysql_db,
            server.port,
            protocol="tls",
            trunk_type="static_ip",
            public_ip_in_contact=True,
            options_ping=True,
        )
        udp, tcp, tls = free_port(), free_port(), free_port()
        env = {**FAST, "SIDECAR_TLS_CERT": sbc_cert, "SIDECAR_TLS_KEY": sbc_key, "SEND_OPTIONS_PING_INTERVAL": "1"}
        listen = f"udp:127.0.0.1:{udp},tcp:127.0.0.1:{tcp},tls:127.0.0.1:{tls}"
        sidecar = await start_sidecar(cluster_id, mysql_db, env=env, listen=listen)
        try:

            async def registered_and_pinged() -> bool:
                status = await register_status(mysql_db, carrier.carrier_sid)
                pinged = any(r.method == "OPTIONS" for r in server.received)
                return bool(status and status["status"] == "ok" and pinged)

            await eventually(registered_and_pinged)
            stream = [fields[b"type"].decode() for _, fields in await redis.xrange(sidecar.names.carriers)]
        finally:
            await stop_sidecar(sidecar)
    first, authed = server.registers()
    assert first.text.startswith("REGISTER sip:carrier.test SIP/2.0")
    for request in server.received:  # REGISTERs and pings, all over the one connection the first one opened
        assert request.connection == 1
        via = request.header("Via") or ""
        assert via.startswith(f"SIP/2.0/TLS 127.0.0.1:{tls};branch=z9hG4bK") and via.endswith(";rport"), via
    for register in (first, authed):
        assert register.header("Contact") == f"<sip:{USERNAME}@127.0.0.1:{tls};transport=tls>;expires=3600"
        assert register.header("Call-ID") == carrier.gateway_sid
    cseq = int((first.header("CSeq") or "").split()[0])
    assert authed.header("CSeq") == f"{cseq + 1} REGISTER" and first.header("From") == authed.header("From")
    assert first.header("Authorization") is None
    credentials = parse_digest_params(authed.header("Authorization") or "")
    assert credentials["opaque"] == "0paque" and credentials["qop"] == "auth"  # the server checked the response
    ping = next(r for r in server.received if r.method == "OPTIONS")
    assert ping.text.startswith(f"OPTIONS sip:127.0.0.1:{server.port} SIP/2.0")
    assert "CarrierRegistered" in stream and "GatewayPingSucceeded" in stream
    with capsys.disabled():
        print("\n--- carrier over TLS (a Python registrar) transcript ---\n" + "\n".join(server.transcript[:6]))


async def test_gateways_named_by_dns_srv_a_and_a_name_that_does_not_resolve(
    cluster_id: str, mysql_db: str, redis: Redis
) -> None:
    srv_port, a_port = free_port(), free_port()
    records = {
        ("_sip._udp.carrier.test", "SRV"): [f"10 10 {srv_port} sip-a.carrier.test.", "20 10 5999 sip-b.carrier.test."],
        ("sip-a.carrier.test", "A"): ["127.0.0.1"],
        ("sip-b.carrier.test", "A"): ["127.0.0.2"],
        ("gw.a-carrier.test", "A"): ["127.0.0.1"],
    }
    by_srv = await seed_carrier(mysql_db, None, host="carrier.test", name="By SRV")  # a reg trunk: eph-gw-ip
    by_a = await seed_carrier(mysql_db, a_port, host="gw.a-carrier.test", name="By A", trunk_type="static_ip")
    lost = await seed_carrier(mysql_db, None, host="nowhere.carrier.test", name="Lost", trunk_type="static_ip")
    sipp_srv = uas("uas-carrier-challenge.xml", srv_port, {"GRANT": "3600"}, timeout_s=40)
    sipp_a = uas("uas-carrier-challenge.xml", a_port, {"GRANT": "3600"}, timeout_s=40)
    await asyncio.sleep(0.3)
    async with dns_server(records) as (dns, dns_port):
        env = {**FAST, "SIDECAR_DNS_SERVERS": f"127.0.0.1:{dns_port}"}
        sidecar = await start_sidecar(cluster_id, mysql_db, env=env)
        try:
            srv_result, a_result = await asyncio.wait_for(asyncio.gather(sipp_srv, sipp_a), 50)
            assert srv_result.returncode == 0, srv_result.stderr + srv_result.messages[-3000:]
            assert a_result.returncode == 0, a_result.stderr + a_result.messages[-3000:]
            # no port: SRV, the priority 10 target's port; a port: A records only, that port
            assert {r.header("Call-ID") for r in received_registers(srv_result.messages)} == {by_srv.gateway_sid}
            assert {r.header("Call-ID") for r in received_registers(a_result.messages)} == {by_a.gateway_sid}
            assert "_sip._udp.carrier.test" in dns.asked("SRV") and "sip-a.carrier.test" in dns.asked("A")
            assert "gw.a-carrier.test" in dns.asked("A")
            assert not [name for name in dns.asked("SRV") if "a-carrier" in name]

            async def failed() -> CarrierRegisterFailed | None:
                codec = default_codec()
                for _, fields in await redis.xrange(sidecar.names.carriers):
                    event = codec.decode(fields)
                    if isinstance(event, CarrierRegisterFailed) and event.sip_gateway_sid == lost.gateway_sid:
                        return event
                return None

            failure = await eventually(failed)
            reason = "send failed: cannot resolve nowhere.carrier.test: no such domain (NXDOMAIN)"
            assert (failure.status, failure.reason) == (0, reason)
            assert "_sip._udp.nowhere.carrier.test" in dns.asked("SRV")  # then its A records, NXDOMAIN too
            assert "nowhere.carrier.test" in dns.asked("A")
            lost_status = await eventually(lambda: register_status(mysql_db, lost.carrier_sid))
            assert (lost_status["status"], lost_status["reason"]) == ("fail", reason)

            async def whitelisted() -> bool:
                addresses = ("127.0.0.1", "127.0.0.2")  # every SRV target's address lets the reg trunk in
                return all([await redis.hget(f"eph-gw-ip:{ip}", by_srv.carrier_sid) for ip in addresses])

            await eventually(whitelisted)
        finally:
            await stop_sidecar(sidecar)
            for ip in ("127.0.0.1", "127.0.0.2"):
                await redis.hdel(f"eph-gw-ip:{ip}", by_srv.carrier_sid)


async def test_refresh_at_half_of_a_30_s_grant(
    cluster_id: str, mysql_db: str, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    carrier = await seed_carrier(mysql_db, port, trunk_type="static_ip")
    sipp = uas("uas-carrier-refresh.xml", port, {"GRANT": "30"}, timeout_s=60)
    await asyncio.sleep(0.3)
    env = {"SIDECAR_REGBOT_START_DELAY_MAX_S": "0", "SIDECAR_REGBOT_CHECK_INTERVAL_S": "1"}  # MIN_EXPIRES stays 30
    sidecar = await start_sidecar(cluster_id, mysql_db, env=env)
    try:
        result = await asyncio.wait_for(sipp, 70)
        assert result.returncode == 0, result.stderr + result.messages[-3000:]
    finally:
        await stop_sidecar(sidecar)
    first, authed, refresh = received_registers(result.messages)
    granted_at = sipp_sent(result.messages, "SIP/2.0 200 OK")[0]
    assert granted_at > authed.at
    gap_s = (refresh.at - granted_at).total_seconds()
    assert 13 <= gap_s <= 17, gap_s  # expires / 2 = 15 s, found by the regbot's one-second check
    assert {r.header("Call-ID") for r in (first, authed, refresh)} == {carrier.gateway_sid}
    cseqs = [int((r.header("CSeq") or "").split()[0]) for r in (first, authed, refresh)]
    assert cseqs[0] < cseqs[1] < cseqs[2], cseqs
    assert refresh.header("Authorization") is None  # granted without a new challenge
    with capsys.disabled():
        print(f"\n--- sipp (carrier, Expires: 30) transcript; refresh {gap_s:.3f} s after the 200 ---\n")
        print(result.messages)


async def test_a_srv_target_that_never_answers_over_udp_gives_way_to_the_next_priority(
    cluster_id: str, mysql_db: str, redis: Redis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # RFC 3263 4.3: carrier.test's priority 10 SRV target is a bound UDP port that reads and never answers (a
    # real timeout, no ICMP), priority 20 is sipp, challenging then granting. The edge's Timer F is cut from 32
    # to 8 s, so the silent target has its share, 4 s (copies at 0, 0.5, 1.5, 3.5 s), before the REGISTER goes,
    # as a new transaction, to sipp; the digest retry goes to sipp, the address that challenged
    monkeypatch.setattr(outbound, "TRANSACTION_TIMEOUT_S", 8.0)
    loop = asyncio.get_running_loop()
    silent = SilentUdp()
    endpoint, _ = await loop.create_datagram_endpoint(lambda: silent, local_addr=("127.0.0.1", 0))
    silent_port, sipp_port = endpoint.get_extra_info("sockname")[1], free_port()
    records = {
        ("_sip._udp.carrier.test", "SRV"): [
            f"10 10 {silent_port} quiet.carrier.test.",
            f"20 10 {sipp_port} live.carrier.test.",
        ],
        ("quiet.carrier.test", "A"): ["127.0.0.1"],
        ("live.carrier.test", "A"): ["127.0.0.1"],
    }
    carrier = await seed_carrier(mysql_db, None, host="carrier.test", trunk_type="static_ip")
    sipp = uas("uas-carrier-challenge.xml", sipp_port, {"GRANT": "3600"}, timeout_s=30)
    await asyncio.sleep(0.3)
    try:
        async with dns_server(records) as (dns, dns_port):
            env = {**FAST, "SIDECAR_DNS_SERVERS": f"127.0.0.1:{dns_port}"}
            sidecar = await start_sidecar(cluster_id, mysql_db, env=env)
            started = datetime.now()
            try:
                result = await asyncio.wait_for(sipp, 40)
                assert result.returncode == 0, result.stderr + result.messages[-3000:]

                async def registered() -> dict[str, object] | None:
                    status = await register_status(mysql_db, carrier.carrier_sid)
                    return status if status and status["status"] == "ok" else None

                status = await eventually(registered)
                registered_after_s = (datetime.now() - started).total_seconds()
                codec = default_codec()
                facts = [codec.decode(fields) for _, fields in await redis.xrange(sidecar.names.carriers)]
                await asyncio.sleep(0.5)  # nothing more goes to the silent target
            finally:
                await stop_sidecar(sidecar)
    finally:
        endpoint.close()
    assert dns.asked("SRV") == ["_sip._udp.carrier.test"]
    assert status["reason"] == "200 OK" and status["expires"] == 3600
    copies = [text for _, text in silent.arrivals]
    assert len(copies) == 4 and len(set(copies)) == 1, copies  # one transaction, retransmitted, then given up
    quiet = Seen(silent.arrivals[0][0], copies[0])
    first, authed = received_registers(result.messages)
    assert quiet.text.startswith("REGISTER sip:carrier.test SIP/2.0") and first.text.startswith(
        "REGISTER sip:carrier.test SIP/2.0"
    )
    for name in ("Call-ID", "CSeq", "From", "To", "Contact", "Expires"):  # the same request ...
        assert first.header(name) == quiet.header(name), name
    assert quiet.header("Call-ID") == carrier.gateway_sid and quiet.header("Authorization") is None
    quiet_via, first_via = quiet.header("Via") or "", first.header("Via") or ""
    assert quiet_via != first_via and quiet_via.split(";branch=")[0] == first_via.split(";branch=")[0]  # ... anew
    moved_after_s = (first.at - quiet.at).total_seconds()
    assert 3.8 <= moved_after_s < 4.6, moved_after_s  # the silent target's share of the 8 s
    check_digest(authed.header("Authorization"))
    granted_at = sipp_sent(result.messages, "SIP/2.0 200 OK")[0]
    assert (granted_at - quiet.at).total_seconds() < 8.0  # the whole exchange within one Timer F
    assert registered_after_s < 12.0, registered_after_s
    [answered] = [fact for fact in facts if isinstance(fact, OutboundRegisterAnswered)]
    assert (answered.status, answered.authenticated) == (200, True)
    assert answered.source == f"127.0.0.1:{sipp_port}"  # which address answered, in the fact
    assert answered.unanswered == (f"127.0.0.1:{silent_port}",)  # and which one did not
    assert any(isinstance(fact, CarrierRegistered) for fact in facts)
    with capsys.disabled():
        print(
            f"\n--- failover: {len(copies)} copies to the silent target, sipp reached {moved_after_s:.3f} s after"
            f" the first, registered {registered_after_s:.3f} s after the service started ---"
        )
