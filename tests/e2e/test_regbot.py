"""Outbound registration end to end: sipp plays the carrier's registrar, the service registers to it.

The regbot reads the carrier from MariaDB, the native front sends the REGISTERs, and the test checks what sipp
received (headers, digest, Call-ID constant, CSeq increasing, refresh at expires/2), `register_status` in
MariaDB, `eph-gw-ip:<ip>` in Redis, the failure threshold with its alert, and the leader's takeover.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import re
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import aiomysql
import pytest
from redis.asyncio import Redis

from events import StreamNames, default_codec
from ingest.sip.digest import parse_digest_params
from runtime import cli
from tests.conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER, base_env, free_port
from tests.e2e.conftest import SippResult, run_sipp, start_sidecar, stop_sidecar, wait_healthy

PASSWORD = "s3cret-carrier"
USERNAME = "4415550100"
ROOT = Path(__file__).resolve().parents[2]
FAST = {
    "SIDECAR_REGBOT_START_DELAY_MAX_S": "0",
    "SIDECAR_REGBOT_CHECK_INTERVAL_S": "1",
    "JAMBONES_REGBOT_MIN_EXPIRES_INTERVAL": "2",
}


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


@dataclass
class Carrier:
    carrier_sid: str
    gateway_sid: str
    port: int | None


async def seed_carrier(
    database: str,
    port: int | None,
    *,
    trunk_type: str = "reg",
    name: str = "Carrier One",
    host: str = "127.0.0.1",
    protocol: str = "udp",
    public_ip_in_contact: bool = False,
    options_ping: bool = False,
) -> Carrier:
    """A carrier that requires registration, with one outbound gateway at `host[:port]` over `protocol`."""
    carrier = Carrier(str(uuid.uuid4()), str(uuid.uuid4()), port)
    connection = await aiomysql.connect(
        host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD, db=database, autocommit=True
    )
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(
                "INSERT INTO voip_carriers (voip_carrier_sid, name, requires_register, is_active, register_username,"
                " register_password, register_sip_realm, trunk_type, register_public_ip_in_contact)"
                " VALUES (%s, %s, 1, 1, %s, %s, %s, %s, %s)",
                (carrier.carrier_sid, name, USERNAME, PASSWORD, "carrier.test", trunk_type, public_ip_in_contact),
            )
            await cursor.execute(
                "INSERT INTO sip_gateways (sip_gateway_sid, voip_carrier_sid, ipv4, port, inbound, outbound,"
                " is_active, protocol, send_options_ping) VALUES (%s, %s, %s, %s, 1, 1, 1, %s, %s)",
                (carrier.gateway_sid, carrier.carrier_sid, host, port, protocol, options_ping),
            )
    finally:
        connection.close()
    return carrier


async def carrier_row(database: str, carrier_sid: str) -> dict[str, object]:
    connection = await aiomysql.connect(
        host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD, db=database, autocommit=True
    )
    try:
        async with connection.cursor(aiomysql.DictCursor) as cursor:
            await cursor.execute("SELECT * FROM voip_carriers WHERE voip_carrier_sid = %s", (carrier_sid,))
            row: dict[str, object] = await cursor.fetchone()
            return row
    finally:
        connection.close()


async def eventually(check, timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


def uas(
    scenario: str, port: int, replace: dict[str, str], timeout_s: float = 60.0, transport: str = "u1"
) -> asyncio.Task[SippResult]:
    """sipp as the carrier's registrar on `port` (`transport` t1: TCP, one socket)."""
    return asyncio.create_task(
        run_sipp(
            scenario, free_port(), transport=transport, extra=["-p", str(port)], replace=replace, timeout_s=timeout_s
        )
    )


@dataclass
class Seen:
    at: datetime
    text: str

    def header(self, name: str) -> str | None:
        match = re.search(rf"^{name}:[ \t]*(.*?)\r?$", self.text, re.IGNORECASE | re.MULTILINE)
        return match.group(1) if match else None


def received_registers(messages: str) -> list[Seen]:
    """The REGISTERs sipp received, with the time it logged each."""
    seen = []
    for block in re.split(r"^-{20,} ", messages, flags=re.MULTILINE):
        head, _, rest = block.partition("\n")
        if "message received" in rest.split("\n", 1)[0] and "\nREGISTER " in "\n" + rest.split("\n", 1)[-1][:200]:
            stamp_text = head.strip()
            at = datetime.strptime(stamp_text[:26], "%Y-%m-%d %H:%M:%S.%f") if stamp_text else datetime.now()
            seen.append(Seen(at, rest.split("\n", 1)[1].lstrip("\r\n")))
    return seen


async def test_digest_register_refresh_status_and_eph_gw_ip(
    cluster_id: str, mysql_db: str, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    carrier = await seed_carrier(mysql_db, port)
    sipp = uas("uas-carrier-digest.xml", port, {"CONTACT_GRANT": "4", "GRANT": "6"})
    await asyncio.sleep(0.3)
    sidecar = await start_sidecar(cluster_id, mysql_db, env=FAST)
    try:
        result = await asyncio.wait_for(sipp, 60)
        assert result.returncode == 0, result.stderr + result.messages[-3000:]
        registers = received_registers(result.messages)
        assert len(registers) == 4, result.messages
        first, authed, refresh, second_refresh = registers
        assert {r.header("Call-ID") for r in registers} == {carrier.gateway_sid}
        cseqs = [int((r.header("CSeq") or "0").split()[0]) for r in registers]
        assert cseqs == sorted(cseqs) and len(set(cseqs)) == 4, cseqs
        assert cseqs[1] == cseqs[0] + 1
        assert first.text.startswith("REGISTER sip:carrier.test SIP/2.0")
        assert first.header("From") == authed.header("From")  # same tag on the retry
        assert (first.header("From") or "").startswith(f"<sip:{USERNAME}@carrier.test>;tag=")
        assert first.header("To") == f"<sip:{USERNAME}@carrier.test>"
        assert first.header("Contact") == f"<sip:{USERNAME}@carrier.test;transport=udp>;expires=3600"
        assert first.header("Expires") == "3600"
        assert first.header("User-Agent") == "Jambonz 0.9.6"
        assert first.header("Authorization") is None
        via = first.header("Via") or ""
        assert via.startswith(f"SIP/2.0/UDP 127.0.0.1:{sidecar.udp_port};branch=z9hG4bK")
        credentials = parse_digest_params(authed.header("Authorization") or "")
        assert credentials["username"] == USERNAME and credentials["realm"] == "carrier.test"
        assert credentials["uri"] == "sip:carrier.test" and credentials["qop"] == "auth"
        assert credentials["nc"] == "00000001" and re.fullmatch(r"[0-9a-f]{8}", credentials["cnonce"])
        assert credentials["opaque"] == "0paque" and credentials["algorithm"] == "MD5"
        ha1 = md5(f"{USERNAME}:carrier.test:{PASSWORD}")
        ha2 = md5("REGISTER:sip:carrier.test")
        expected = md5(f"{ha1}:{credentials['nonce']}:00000001:{credentials['cnonce']}:auth:{ha2}")
        assert credentials["response"] == expected
        # Refresh at expires / 2: 6 s granted → 3 s; then the Contact's expires=4 wins over Expires → 2 s.
        first_gap = (refresh.at - authed.at).total_seconds()
        second_gap = (second_refresh.at - refresh.at).total_seconds()
        assert 2.5 <= first_gap <= 4.6, first_gap
        assert 1.5 <= second_gap <= 3.6, second_gap
        assert refresh.header("Authorization") is None

        async def status() -> dict[str, object] | None:
            row = await carrier_row(mysql_db, carrier.carrier_sid)
            raw = row["register_status"]
            value = json.loads(str(raw)) if raw else None
            return value if value and value.get("expires") == 6 and value.get("cseq") != "1 REGISTER" else None

        register_status = await eventually(status)
        assert register_status["status"] == "ok" and register_status["reason"] == "200 OK"
        assert register_status["callId"] == carrier.gateway_sid
        assert list(register_status) == ["status", "reason", "cseq", "callId", "timestamp", "expires"]
        until = await redis.hget("eph-gw-ip:127.0.0.1", carrier.carrier_sid)
        assert until is not None and int(until) > time.time()
        assert 0 < await redis.ttl("eph-gw-ip:127.0.0.1") <= 7200
        stream = await redis.xrange(sidecar.names.carriers)
        types = [fields[b"type"].decode() for _, fields in stream]
        assert "RegbotLeaderAcquired" in types and types.count("CarrierRegistered") >= 3
        for _, fields in stream + await redis.xrange(sidecar.names.commands):
            assert PASSWORD.encode() not in fields[b"data"]
        capsys.readouterr()
        env = base_env(cluster_id, mysql_db)
        assert await asyncio.to_thread(cli.main, ["carriers"], env) == 0
        listing = capsys.readouterr().out
        assert f"Carrier One ({carrier.carrier_sid}) gateway {carrier.gateway_sid}" in listing
        assert "state registered; last answer 200 OK" in listing and "total 1, registered 1" in listing
        assert await asyncio.to_thread(cli.main, ["history", "--carrier", "Carrier One"], env) == 0
        story = capsys.readouterr().out
        assert "answered 200 OK (with credentials) cseq 2" in story
        assert "registered for 6s" in story and "registered for 4s" in story
        assert PASSWORD not in listing + story
        # /metrics: the leader counts its gateways by status.
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{sidecar.http_port}/metrics") as response:
                exposition = await response.text()
        assert "sbc_sidecar_regbot_leader 1.0" in exposition
        assert "sbc_sidecar_regbot_gateways_registered 1.0" in exposition
        assert "sbc_sidecar_regbot_gateways_failed 0.0" in exposition
        with capsys.disabled():
            print("\n--- sipp (carrier) transcript ---\n" + result.messages)
            print("--- sbc-sidecar carriers ---\n" + listing + "--- sbc-sidecar history --carrier ---\n" + story)
    finally:
        await stop_sidecar(sidecar)
        await redis.hdel("eph-gw-ip:127.0.0.1", carrier.carrier_sid)


async def test_proxy_authentication_407(cluster_id: str, mysql_db: str, redis: Redis) -> None:
    port = free_port()
    carrier = await seed_carrier(mysql_db, port, trunk_type="static_ip")
    sipp = uas("uas-carrier-proxy-auth.xml", port, {})
    await asyncio.sleep(0.3)
    sidecar = await start_sidecar(cluster_id, mysql_db, env=FAST)
    try:
        result = await asyncio.wait_for(sipp, 40)
        assert result.returncode == 0, result.stderr
        first, authed = received_registers(result.messages)
        assert authed.header("Authorization") is None
        credentials = parse_digest_params(authed.header("Proxy-Authorization") or "")
        assert credentials["realm"] == "proxy.test" and "qop" not in credentials and "nc" not in credentials
        ha1 = md5(f"{USERNAME}:proxy.test:{PASSWORD}")
        assert credentials["response"] == md5(f"{ha1}:{credentials['nonce']}:{md5('REGISTER:sip:carrier.test')}")

        async def ok() -> bool:
            raw = (await carrier_row(mysql_db, carrier.carrier_sid))["register_status"]
            return bool(raw) and json.loads(str(raw))["status"] == "ok"

        await eventually(ok)
        assert not await redis.exists("eph-gw-ip:127.0.0.1")  # not a reg trunk
    finally:
        await stop_sidecar(sidecar)


async def test_failure_threshold_deactivates_reg_trunk_with_alert(cluster_id: str, mysql_db: str, redis: Redis) -> None:
    port = free_port()
    name = f"Reject {cluster_id}"
    carrier = await seed_carrier(mysql_db, port, name=name)
    sipp = uas("uas-carrier-reject.xml", port, {"STATUS": "403 Forbidden", "TIMES": "2"})
    await asyncio.sleep(0.3)
    env = {
        **FAST,
        "REGISTER_RESPONSE_REMOVE": "403,503",
        "JAMBONES_REGBOT_REGISTER_FAILURE_THRESHOLD": "2",
        "JAMBONES_REGBOT_FAILURE_RETRY_INTERVAL": "1",
        "JAMBONES_TIME_SERIES_HOST": "127.0.0.1",
    }
    sidecar = await start_sidecar(cluster_id, mysql_db, env=env)
    try:
        result = await asyncio.wait_for(sipp, 40)
        assert result.returncode == 0, result.stderr

        async def deactivated() -> dict[str, object] | None:
            row = await carrier_row(mysql_db, carrier.carrier_sid)
            return row if not row["is_active"] else None

        row = await eventually(deactivated)
        assert row["requires_register"]  # a reg trunk is deactivated, not unregistered
        status = json.loads(str(row["register_status"]))
        assert status["status"] == "fail" and status["reason"] == "403 Forbidden" and status["expires"] == 0
        until = await redis.hget("eph-gw-ip:127.0.0.1", carrier.carrier_sid)
        assert until is None  # the stopped regbot's field is deleted
        message = f"Deactivating carrier {name} (sid:{carrier.carrier_sid}) due to registration errors"

        async def alerted() -> bool:
            async with aiohttp.ClientSession() as session:
                query = f"SELECT message FROM alerts WHERE message = '{message}'"
                async with session.get("http://127.0.0.1:8086/query", params={"db": "alerts", "q": query}) as r:
                    body = await r.json()
            return bool(body["results"][0].get("series"))

        await eventually(alerted)
        await asyncio.sleep(2.5)  # stopped: no REGISTER after the threshold (sipp has gone; nothing is sent)
        codec = default_codec()
        commands = [codec.decode(f) for _, f in await redis.xrange(sidecar.names.commands)]
        assert len(commands) == 2
    finally:
        await stop_sidecar(sidecar)


async def leader_events(redis: Redis, stream: str) -> list[tuple[str, str, datetime]]:
    codec = default_codec()
    out = []
    for _, fields in await redis.xrange(stream):
        event = codec.decode(fields)
        if event.TYPE.startswith("RegbotLeader"):
            out.append((event.TYPE, event.instance, event.occurred_at))  # type: ignore[attr-defined]
    return out


class Registrar(asyncio.DatagramProtocol):
    """A carrier's registrar that answers each REGISTER 200 with `Expires: <grant>` at its source address, as a
    real one does (sipp answers a call where its first message came from, so it cannot follow a new leader)."""

    def __init__(self, grant_s: int) -> None:
        self.grant_s = grant_s
        self.seen: list[tuple[float, tuple[str, int], Seen]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = Seen(datetime.now(), data.decode())
        self.seen.append((time.monotonic(), addr, request))
        lines = ["SIP/2.0 200 OK"]
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            lines.append(f"{name}: {request.header(name)}")
        lines += [f"Expires: {self.grant_s}", "Content-Length: 0", "", ""]
        assert self.transport is not None
        self.transport.sendto("\r\n".join(lines).encode(), addr)


async def test_one_leader_registers_and_a_peer_takes_over(
    cluster_id: str, mysql_db: str, redis: Redis, tmp_path: Path
) -> None:
    port = free_port()
    carrier = await seed_carrier(mysql_db, port, trunk_type="static_ip")
    transport, registrar = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Registrar(10), local_addr=("127.0.0.1", port)
    )
    env = {**FAST, "SIDECAR_REGBOT_LOCK_TTL_S": "3"}
    names = StreamNames(cluster_id)
    # sbc-a, the first leader, is a process of its own, so that it can be killed with SIGKILL.
    a_udp, a_http = free_port(), free_port()
    a_env = {
        **os.environ,
        **base_env(cluster_id, mysql_db),
        **env,
        "SIDECAR_INGEST_ID": "sbc-a",
        "SIDECAR_SIP_LISTEN": f"udp:127.0.0.1:{a_udp}",
        "SIDECAR_HTTP_LISTEN": f"127.0.0.1:{a_http}",
        "SBC_SOCKET_PATH": str(tmp_path / "sbc-a.sock"),
    }
    with (tmp_path / "sbc-a.log").open("wb") as log_file:
        first = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime.cli", "run", env=a_env, cwd=ROOT, stdout=log_file, stderr=log_file
        )
    second = None
    try:
        await wait_healthy(f"http://127.0.0.1:{a_http}/health", timeout_s=30)
        await eventually(lambda: leader_events(redis, names.carriers))
        second = await start_sidecar(cluster_id, mysql_db, env={**env, "SIDECAR_INGEST_ID": "sbc-b"})
        await asyncio.sleep(6)  # both run: one leader, one REGISTER per refresh, all from the leader's SBC
        events = await leader_events(redis, names.carriers)
        assert [(t, i) for t, i, _ in events] == [("RegbotLeaderAcquired", "sbc-a")]
        assert {addr[1] for _, addr, _ in registrar.seen} == {a_udp}
        killed_at = datetime.now(UTC)
        first.send_signal(signal.SIGKILL)  # no clean stop: the lock is left to lapse
        assert await first.wait() == -signal.SIGKILL

        async def taken_over() -> datetime | None:
            for kind, instance, at in await leader_events(redis, names.carriers):
                if kind == "RegbotLeaderAcquired" and instance == "sbc-b":
                    return at
            return None

        acquired_at = await eventually(taken_over, timeout_s=15)
        takeover_s = (acquired_at - killed_at).total_seconds()
        print(f"leader takeover after {takeover_s:.2f} s (kill -9 of sbc-a; lock TTL 3 s, check every 1 s)")
        assert takeover_s <= 3 + 1 + 1
        assert second is not None
        new_port = second.udp_port
        await eventually(lambda: asyncio.sleep(0, [a for _, a, _ in registrar.seen if a[1] == new_port][1:]), 20)
        times = [t for t, _, _ in registrar.seen]
        gaps = [round(b - a, 2) for a, b in itertools.pairwise(times)]
        print("refresh gaps", gaps, "sources", [a[1] for _, a, _ in registrar.seen])
        assert all(gap < 10 for gap in gaps), gaps  # the binding (10 s) never lapsed across the takeover
        assert all(gap >= 4 for gap in gaps), gaps  # one leader: one REGISTER per refresh, never two
        cseqs = [int((r.header("CSeq") or "0").split()[0]) for _, _, r in registrar.seen]
        assert cseqs == sorted(set(cseqs))  # the new leader continued the CSeq from the shared state
        assert {r.header("Call-ID") for _, _, r in registrar.seen} == {carrier.gateway_sid}
    finally:
        transport.close()
        if first.returncode is None:
            first.kill()
            await first.wait()
        if second is not None:
            await stop_sidecar(second)
