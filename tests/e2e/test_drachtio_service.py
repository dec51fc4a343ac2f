"""The whole service on the drachtio front: REGISTER and OPTIONS frames from a drachtio protocol peer."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from ingest.sip import SipResponse, parse_message
from tests.e2e.conftest import projected, start_sidecar, stop_sidecar
from tests.e2e.jambonz import AuthWebhook, populate
from tests.integration.test_drachtio_front import HOSTPORTS, SECRET, DrachtioPeer, network_request


def register(cseq: int, authorization: str | None = None) -> bytes:
    auth = f"Authorization: {authorization}\r\n" if authorization else ""
    return (
        "REGISTER sip:jambonz.org SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.44:5062;branch=z9hG4bK-d" + str(cseq) + ";rport=5062\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:john@jambonz.org>;tag=d1\r\nTo: <sip:john@jambonz.org>\r\n"
        "Call-ID: drachtio-reg-1\r\nCSeq: " + str(cseq) + " REGISTER\r\n"
        "Contact: <sip:john@192.0.2.44:5062>;expires=3600\r\n" + auth + "Expires: 3600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def answer_digest(challenge: str) -> str:
    params = dict(p.strip().split("=", 1) for p in challenge.removeprefix("Digest ").split(","))
    realm, nonce = params["realm"].strip('"'), params["nonce"].strip('"')
    ha1 = hashlib.md5(f"john:{realm}:1234".encode()).hexdigest()
    ha2 = hashlib.md5(b"REGISTER:sip:jambonz.org").hexdigest()
    response = hashlib.md5(f"{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}".encode()).hexdigest()
    return (
        f'Digest username="john", realm="{realm}", nonce="{nonce}", uri="sip:jambonz.org", '
        f'response="{response}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"'
    )


@pytest.fixture
async def peer() -> AsyncIterator[DrachtioPeer]:
    server = DrachtioPeer()
    server.ack_answers = True
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def answer_to(connection, txn: str) -> SipResponse:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(10):
        while True:
            message = await connection.inbox.get()
            if message.fields[1] == "sip" and message.fields[2] == txn and message.sip:
                response = parse_message(message.sip)
                assert isinstance(response, SipResponse)
                return response


async def test_register_and_options_through_drachtio(
    cluster_id: str, mysql_db: str, redis: Redis, peer: DrachtioPeer
) -> None:
    webhook = AuthWebhook()
    await webhook.start()
    await populate(mysql_db, webhook.url)
    env = {"DRACHTIO_HOST": "127.0.0.1", "DRACHTIO_PORT": str(peer.port), "DRACHTIO_SECRET": SECRET}
    sidecar = await start_sidecar(cluster_id, mysql_db, env=env)
    try:
        connection = await peer.next_connection()
        assert connection.routes == ["register", "options"]

        await connection.send(network_request("txn-1", register(1)))
        challenge = await answer_to(connection, "txn-1")
        assert challenge.status == 401
        www = challenge.headers.get("WWW-Authenticate") or ""
        assert www.startswith('Digest realm="jambonz.org", algorithm=MD5, qop="auth", nonce="')

        await connection.send(network_request("txn-2", register(2, answer_digest(www))))
        granted = await answer_to(connection, "txn-2")
        assert granted.status == 200
        assert granted.headers.get("Expires") == "30"  # drachtio said udp: the NAT rule applies
        record = json.loads(await projected(redis, "user:john@jambonz.org") or b"")
        assert record["sbcAddress"] == HOSTPORTS  # drachtio's hostport string, byte for byte
        assert record["proxy"] == "sip:192.0.2.44:5062"
        assert record["protocol"] == "udp"
        assert record["privateSbcAddress"] == "172.16.3.3:5070"  # the last localHostports tcp entry in the CIDRs

        options = (
            b"OPTIONS sip:198.51.100.7 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bK-o1\r\n"
            b"From: <sip:ping@192.0.2.50>;tag=o\r\nTo: <sip:198.51.100.7>\r\nCall-ID: o-1\r\nCSeq: 1 OPTIONS\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        await connection.send(network_request("txn-3", options, src="192.0.2.50", port=5060))
        pong = await answer_to(connection, "txn-3")
        assert pong.status == 200 and pong.headers.get("X-Members") is None
    finally:
        await stop_sidecar(sidecar)
        await webhook.close()
        await redis.delete("user:john@jambonz.org")
        await redis.zrem("active-user", "user:john@jambonz.org")
