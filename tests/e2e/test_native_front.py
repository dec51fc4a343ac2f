"""The native front's transports and transactions: TLS, WebSocket, retransmissions, hostile datagrams."""

from __future__ import annotations

import asyncio
import hashlib
import random
import ssl
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from events import RegisterReceived, default_codec
from ingest.fronts.front import IncomingRequest
from ingest.fronts.native import NativeFront
from ingest.sip import SipResponse, parse_message
from runtime.settings import SipListen
from tests.certs import self_signed
from tests.conftest import free_port
from tests.e2e.conftest import Sidecar, run_sipp, start_sidecar, stop_sidecar, udp_exchange
from tests.e2e.jambonz import AuthWebhook, populate

OPTIONS = (
    "OPTIONS sip:{host} SIP/2.0\r\nVia: SIP/2.0/{transport} 192.0.2.1:5070;branch=z9hG4bK{branch};rport\r\n"
    "From: <sip:probe@example.com>;tag=9\r\nTo: <sip:{host}>\r\nCall-ID: {branch}\r\nCSeq: 1 OPTIONS\r\n"
    "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


async def read_sip_response(reader: asyncio.StreamReader) -> SipResponse:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    message = parse_message(head)
    assert isinstance(message, SipResponse)
    return message


async def test_tls_listener_answers_and_reports_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    front = NativeFront([SipListen("tls", "127.0.0.1", port)], tls_cert=cert, tls_key=key)
    seen: list[str] = []

    async def handler(request: IncomingRequest) -> None:
        seen.append(request.facts.transport)
        await request.respond(200, "OK", [("X-Seen", request.facts.transport)])

    front.set_handler(handler)
    async with front:
        assert front.sbc_address == f"tls/127.0.0.1:{port}"
        client = ssl.create_default_context()
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        for n in range(2):  # two requests on one connection
            writer.write(OPTIONS.format(host="127.0.0.1", transport="TLS", branch=f"tls{n}").encode())
            response = await read_sip_response(reader)
            assert response.status == 200 and response.headers.get("X-Seen") == "tls"
            assert response.call_id == f"tls{n}"
        writer.close()
    assert seen == ["tls", "tls"]


def digest_authorization(challenge: str, user: str, password: str, uri: str) -> str:
    params = dict(part.strip().split("=", 1) for part in challenge.removeprefix("Digest ").split(","))
    realm, nonce = params["realm"].strip('"'), params["nonce"].strip('"')
    ha1 = hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
    cnonce, nc = "0a4f113b", "00000001"
    response = hashlib.md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{response}", '
        f'algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"'
    )


def ws_register(cseq: int, authorization: str | None = None) -> str:
    auth = f"Authorization: {authorization}\r\n" if authorization else ""
    return (
        "REGISTER sip:jambonz.org SIP/2.0\r\nVia: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKws"
        + str(cseq)
        + '\r\nMax-Forwards: 69\r\nTo: <sip:john@jambonz.org>\r\nFrom: "John" <sip:john@jambonz.org>;tag=ws1\r\n'
        "Call-ID: ws-call-1\r\nCSeq: " + str(cseq) + " REGISTER\r\n"
        "Contact: <sip:k2b5s7@df7jal23ls0d.invalid;transport=ws>;+sip.ice;reg-id=1;"
        '+sip.instance="<urn:uuid:2a9c3bd1-7c88-4bbd-8d6e-4b7e1b2d0a55>";expires=600\r\n'
        + auth
        + "Expires: 600\r\nAllow: INVITE,ACK,CANCEL,BYE,OPTIONS\r\nSupported: path,gruu,outbound\r\n"
        "User-Agent: JsSIP 3.10.0\r\nContent-Length: 0\r\n\r\n"
    )


async def test_websocket_options_and_register(
    cluster_id: str, mysql_db: str, redis: Redis, webhook: AuthWebhook
) -> None:
    await populate(mysql_db, webhook.url)
    ws_port = free_port()
    sidecar = await start_sidecar(
        cluster_id, mysql_db, listen=f"udp:127.0.0.1:{free_port()},ws:127.0.0.1:{ws_port}"
    )
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{ws_port}/", protocols=("sip",)) as ws:
                assert ws.protocol == "sip"
                await ws.send_str(OPTIONS.format(host="127.0.0.1", transport="WS", branch="ws0"))
                answer = parse_message((await ws.receive_str(timeout=5)).encode())
                assert isinstance(answer, SipResponse) and answer.status == 200
                await ws.send_str(ws_register(1))
                challenge = parse_message((await ws.receive_str(timeout=5)).encode())
                assert isinstance(challenge, SipResponse) and challenge.status == 401
                authorization = digest_authorization(
                    challenge.headers.get("WWW-Authenticate") or "", "john", "1234", "sip:jambonz.org"
                )
                await ws.send_str(ws_register(2, authorization))
                granted = parse_message((await ws.receive_str(timeout=5)).encode())
                assert isinstance(granted, SipResponse) and granted.status == 200, granted
                assert granted.headers.get("Expires") == "45"  # not UDP: the grant as it is
        for _ in range(50):
            if await redis.get("user:john@jambonz.org"):
                break
            await asyncio.sleep(0.05)
        import json

        record = json.loads(await redis.get("user:john@jambonz.org"))
        assert record["protocol"] == "wss"  # the top Via's transport, as the original records it
        assert record["contact"].startswith("sip:k2b5s7@df7jal23ls0d.invalid;transport=ws")
        assert record["sbcAddress"].endswith(f"ws/127.0.0.1:{ws_port}")
    finally:
        await stop_sidecar(sidecar)
        await redis.delete("user:john@jambonz.org")
        await redis.zrem("active-user", "user:john@jambonz.org")


async def test_retransmissions_are_absorbed_then_answered_alike(
    cluster_id: str, mysql_db: str, redis: Redis, webhook: AuthWebhook
) -> None:
    await populate(mysql_db, webhook.url)
    webhook.delay_s = 1.7  # the authenticated REGISTER waits; sipp retransmits it (T1 = 500 ms)
    sidecar = await start_sidecar(cluster_id, mysql_db)
    try:
        result = await run_sipp(
            "register-auth.xml",
            sidecar.udp_port,
            inf="SEQUENTIAL\njohn;jambonz.org;1234\n",
            extra=["-key", "expires", "3600", "-au", "john", "-ap", "1234"],
            replace={"[final]": "200"},
        )
        assert result.returncode == 0, result.stderr
        sent = result.messages.count("UDP message sent")
        assert sent >= 4, "sipp should have retransmitted the delayed REGISTER"
        entries = await redis.xrange(sidecar.names.requests)
        codec = default_codec()
        registers = [codec.decode(fields) for _, fields in entries]
        assert [r.cseq for r in registers if isinstance(r, RegisterReceived)] == [1, 2]  # each once
        assert len(webhook.seen) == 1

        # After the final answer, a retransmission gets the very same response again (Timer J).
        request = (
            b"REGISTER sip:jambonz.org SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKretrans1;rport\r\n"
            b"From: <sip:john@jambonz.org>;tag=r1\r\nTo: <sip:john@jambonz.org>\r\nCall-ID: retrans-1\r\n"
            b"CSeq: 1 REGISTER\r\nContact: <sip:john@127.0.0.1:5999>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n"
        )
        first = await udp_exchange(sidecar.udp_port, request)
        again = [await udp_exchange(sidecar.udp_port, request) for _ in range(2)]
        assert first.startswith(b"SIP/2.0 401 ")
        assert again == [first, first]
        entries = await redis.xrange(sidecar.names.requests)
        assert sum(1 for _, f in entries if b"retrans-1" in f[b"data"]) == 1
    finally:
        await stop_sidecar(sidecar)
        await redis.delete("user:john@jambonz.org")
        await redis.zrem("active-user", "user:john@jambonz.org")


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        position = rng.randrange(len(out)) if out else 0
        if choice < 0.4 and out:
            out[position] = rng.randrange(256)
        elif choice < 0.6:
            out[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif choice < 0.8 and out:
            del out[position : position + rng.randint(1, 32)]
        else:
            out = out[: rng.randrange(len(out) + 1)]
    return bytes(out)


async def test_ten_thousand_hostile_datagrams_do_not_stop_the_listener(sidecar: Sidecar) -> None:
    rng = random.Random(20261126)
    seeds = [
        OPTIONS.format(host="127.0.0.1", transport="UDP", branch="fz").encode(),
        ws_register(1).replace("WSS", "UDP").encode(),
    ]
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    try:
        for n in range(10_000):
            if n % 2:
                payload = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
            else:
                payload = mutate(rng.choice(seeds), rng)
            transport.sendto(payload, ("127.0.0.1", sidecar.udp_port))
            if n % 200 == 0:
                await asyncio.sleep(0.01)  # let the loop breathe; the service shares it
    finally:
        transport.close()
    answer = await udp_exchange(
        sidecar.udp_port, OPTIONS.format(host="127.0.0.1", transport="UDP", branch="after").encode()
    )
    assert answer.startswith(b"SIP/2.0 200 OK\r\n")
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{sidecar.http_port}/metrics") as r,
    ):
        metrics = dict(line.split(" ", 1) for line in (await r.text()).splitlines() if line)
    assert float(metrics["sbc_sidecar_ingest_sip_dropped_unparseable"]) >= 1000
    assert float(metrics["sbc_sidecar_ingest_sip_received"]) >= 9000


async def test_non_utf8_request_gets_400_and_no_event(sidecar: Sidecar, redis: Redis) -> None:
    payload = OPTIONS.format(host="127.0.0.1", transport="UDP", branch="bad8").replace(
        "probe@example.com", "pr\xffbe@example.com").encode("latin-1")
    answer = await udp_exchange(sidecar.udp_port, payload.replace(b"OPTIONS sip", b"OPTIONS sip", 1))
    assert answer.startswith(b"SIP/2.0 400 Bad Request\r\n")
    assert b"X-Reason: Message is not valid UTF-8" in answer
    assert await redis.xlen(sidecar.names.requests) == 0
