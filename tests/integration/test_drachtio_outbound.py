"""The edge's outbound REGISTER (ingest/outbound.py) over the drachtio front, against the protocol peer.

What the peer receives is compared byte for byte with DRACHTIO.md 7 and 7.1 (and the worked examples
14.6 to 14.8, which use the same carrier): the first REGISTER as a `sip` message, drachtio's ack with
the transaction id, the carrier's challenge, the digest retry as a new request (same Call-ID and From
tag, CSeq + 1, pinned to the challenger when the next hop is a hostname), and the final answer the
edge reports as `OutboundRegisterAnswered`. Only the edge's random From tag and cnonce are taken from
what it sent; the digest is worked out here from section 7.1's formula.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest

from events import OutboundRegisterAnswered, OutboundRegisterRequested, StreamNames, stamp
from ingest.fronts.drachtio import DrachtioFront
from ingest.outbound import OutboundRegistrations
from runtime.handling import Delivery, Outcome
from runtime.sealed import Sealer
from tests.integration.test_drachtio_front import (
    AppMessage,
    DrachtioPeer,
    PeerConnection,
    crlf,
    frame,
    make_front,
    next_of,
    running,
)

NAMES = StreamNames("outbound-test")
SEALER = Sealer("cluster encryption secret")
PASSWORD = "s3cret"  # 14.7's digest is for this password
CALL_ID = "5c8a1e22-6409-1240-81b7-6a2d58cd4660"
USER_AGENT = "jambonz-sbc-sidecar"
CARRIER = "203.0.113.10"  # the challenger of 14.7
SBC = "198.51.100.7:5060"  # the peer's udp hostport (HOSTPORTS of the peer)


@pytest.fixture
async def peer() -> AsyncIterator[DrachtioPeer]:
    server = DrachtioPeer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def digest_response(*, username: str, realm: str, nonce: str, uri: str, cnonce: str | None) -> str:
    """DRACHTIO.md 7.1 step 3, written out: MD5 with qop=auth (nc 00000001) when cnonce is given."""

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5(f"{username}:{realm}:{PASSWORD}")
    ha2 = md5(f"REGISTER:{uri}")
    if cnonce is None:
        return md5(f"{ha1}:{nonce}:{ha2}")
    return md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}")


def command(next_hop: str, *, request_uri: str = "sip:sip.carrier.example") -> OutboundRegisterRequested:
    """What the regbot commands for a carrier `sip.carrier.example` whose gateway is `next_hop`."""
    return OutboundRegisterRequested(
        **stamp(),
        attempt_id="attempt-1",
        voip_carrier_sid="carrier-1",
        sip_gateway_sid="gateway-1",
        carrier_name="Carrier",
        request_uri=request_uri,
        next_hop=next_hop,
        from_uri="sip:4415550100@sip.carrier.example",
        contact="<sip:4415550100@localhost;transport=udp>;expires=600",
        call_id=CALL_ID,
        cseq=104729,
        expires_s=600,
        user_agent=USER_AGENT,
        username="4415550100",
        password_sealed=SEALER.seal(PASSWORD),
        gateway_host="sip.carrier.example",
        edge_id="edge-1",
    )


def register_sip(tag: str, cseq: int, extra: Sequence[str] = (), request_uri: str = "sip:sip.carrier.example") -> bytes:
    """The SIP part the edge gives drachtio: no Via or Max-Forwards (section 7: drachtio adds them)."""
    lines = [
        f"REGISTER {request_uri} SIP/2.0",
        f"From: <sip:4415550100@sip.carrier.example>;tag={tag}",
        "To: <sip:4415550100@sip.carrier.example>",
        f"Call-ID: {CALL_ID}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:4415550100@{SBC};transport=udp>;expires=600",  # `localhost` is the edge's own address
        "Expires: 600",
        f"User-Agent: {USER_AGENT}",
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def sent_frame(message_id: str, fields: Sequence[str], sip: bytes) -> bytes:
    return frame("|".join((message_id, *fields)).encode() + b"\r\n" + sip)


async def accept(connection: PeerConnection, sent: AppMessage, txn: str, proto: str = "udp") -> bytes:
    """Section 7's `OK ... <txn>|Msg sent:|` with the request as drachtio sent it (Via, Max-Forwards added)."""
    assert sent.sip is not None
    start, _, rest = sent.sip.partition(b"\r\n")
    via = f"Via: SIP/2.0/{proto.upper()} 198.51.100.7;rport;branch=z9hG4bK{uuid.uuid4().hex[:12]}"
    as_sent = start + b"\r\n" + f"{via}\r\nMax-Forwards: 70\r\n".encode() + rest
    meta = ("application", str(len(as_sent)), proto, "198.51.100.7", "5060", "14:05:10.004211", txn, "Msg sent:", "")
    leader = "|".join((str(uuid.uuid4()), "response", sent.msg_id, "OK", *meta))
    return frame(leader.encode() + b"\r\n" + as_sent)


def carrier_response(txn: str, sip: bytes, *, proto: str = "udp", source: str = CARRIER, port: int = 5060) -> bytes:
    """Section 7: a response from the network, 11 fields with the last one empty."""
    leader = f"{uuid.uuid4()}|sip|network|{len(sip)}|{proto}|{source}|{port}|14:05:10.031877|{txn}||"
    return frame(leader.encode() + b"\r\n" + sip)


def answer_of(outcome: Outcome) -> OutboundRegisterAnswered:
    [(stream, answer)] = outcome.appends
    assert stream == NAMES.carriers
    assert isinstance(answer, OutboundRegisterAnswered)
    return answer


async def registering(front: DrachtioFront, request: OutboundRegisterRequested) -> asyncio.Future[Outcome]:
    edge = OutboundRegistrations(front, NAMES, SEALER, "edge-1")
    [step] = await edge.begin([Delivery(NAMES.commands, "1-0", request)])
    assert asyncio.iscoroutine(step)
    return asyncio.ensure_future(step)


def test_the_digest_formula_gives_the_worked_example() -> None:
    # 14.7: the Authorization for password s3cret with cnonce 9b8c7d6e
    assert (
        digest_response(
            username="4415550100",
            realm="carrier.example",
            nonce="7d9e1f",
            uri="sip:sip.carrier.example",
            cnonce="9b8c7d6e",
        )
        == "d4bc7d106f17210361a734976a09dbd1"
    )


async def test_challenged_register_is_retried_pinned_to_the_challenger(peer: DrachtioPeer) -> None:
    front = make_front(peer.port)
    async with running(front, peer) as connection:
        outcome = await registering(front, command("sip:sip.carrier.example;transport=udp"))

        # 14.6 / section 7: a new request, `sip||` and the next hop in the outbound-proxy field
        first = await next_of(connection.inbox)
        assert first.sip is not None
        tag_match = re.search(rb"^From: <sip:4415550100@sip\.carrier\.example>;tag=([0-9a-f]{10})\r\n", first.sip, re.M)
        assert tag_match is not None
        tag = tag_match.group(1).decode()
        assert first.frame == sent_frame(
            first.msg_id, ("sip", "", "", "sip:sip.carrier.example;transport=udp"), register_sip(tag, 104729)
        )
        # 14.7: the ack and the carrier's 401 in one segment
        challenge = crlf(
            "SIP/2.0 401 Unauthorized\n"
            "Via: SIP/2.0/UDP 198.51.100.7;rport=5060;branch=z9hG4bKv3yX1a8Qm2tZp;received=198.51.100.7\n"
            f"From: <sip:4415550100@sip.carrier.example>;tag={tag}\n"
            "To: <sip:4415550100@sip.carrier.example>;tag=as1f2e3d4c\n"
            f"Call-ID: {CALL_ID}\n"
            "CSeq: 104729 REGISTER\n"
            'WWW-Authenticate: Digest realm="carrier.example", nonce="7d9e1f", algorithm=MD5, qop="auth"\n'
            "Content-Length: 0\n"
            "\n"
        )
        first_txn = "0d1e2f30-4152-4637-8899-aabbccddeeff"
        await connection.send(await accept(connection, first, first_txn) + carrier_response(first_txn, challenge))

        # 7.1 steps 4 and 5: a new request, same Call-ID and From tag, CSeq + 1, Authorization, and
        # `sip:<respSrcAddr>:<respSrcPort>` (UDP: no transport parameter) as the outbound proxy
        retry = await next_of(connection.inbox)
        assert retry.sip is not None
        cnonce_match = re.search(rb'cnonce="([0-9a-f]+)"', retry.sip)
        assert cnonce_match is not None
        cnonce = cnonce_match.group(1).decode()
        response = digest_response(
            username="4415550100", realm="carrier.example", nonce="7d9e1f", uri="sip:sip.carrier.example", cnonce=cnonce
        )
        authorization = (
            'Authorization: Digest username="4415550100",realm="carrier.example",nonce="7d9e1f",'
            f'uri="sip:sip.carrier.example",response="{response}",algorithm=MD5,qop=auth,nc=00000001,'
            f'cnonce="{cnonce}"'
        )
        assert retry.frame == sent_frame(
            retry.msg_id, ("sip", "", "", f"sip:{CARRIER}:5060"), register_sip(tag, 104730, [authorization])
        )
        # 14.8: the carrier accepts, with an Expires header and the Contact's expires
        retry_txn = "11223344-5566-4778-899a-abbccddeeff0"
        accepted = crlf(
            "SIP/2.0 200 OK\n"
            "Via: SIP/2.0/UDP 198.51.100.7;rport=5060;branch=z9hG4bKc4dE5fG6hI7jK;received=198.51.100.7\n"
            f"From: <sip:4415550100@sip.carrier.example>;tag={tag}\n"
            "To: <sip:4415550100@sip.carrier.example>;tag=as7a8b9c0d\n"
            f"Call-ID: {CALL_ID}\n"
            "CSeq: 104730 REGISTER\n"
            f"Contact: <sip:4415550100@{SBC};transport=udp>;expires=300\n"
            "Expires: 300\n"
            "Content-Length: 0\n"
            "\n"
        )
        await connection.send(await accept(connection, retry, retry_txn) + carrier_response(retry_txn, accepted))
        answer = answer_of(await asyncio.wait_for(outcome, 3))
        assert connection.inbox.empty()  # two requests, nothing more

    assert (answer.status, answer.reason) == (200, "200 OK")
    assert (answer.expires_header, answer.contact_expires) == (300, 300)
    assert (answer.first_cseq, answer.last_cseq, answer.call_id) == (104729, 104730, CALL_ID)
    assert answer.authenticated is True
    assert answer.source == f"{CARRIER}:5060"
    assert (answer.attempt_id, answer.sip_gateway_sid, answer.voip_carrier_sid) == (
        "attempt-1",
        "gateway-1",
        "carrier-1",
    )
    assert PASSWORD not in repr(answer)


async def test_an_ip_next_hop_is_kept_for_the_retry_of_a_407(peer: DrachtioPeer) -> None:
    # 7.1 step 5: no pinning when the next hop is already an IP address (the 407 comes from another one)
    front = make_front(peer.port)
    next_hop = f"sip:{CARRIER}:5060;transport=tcp"
    async with running(front, peer) as connection:
        outcome = await registering(front, command(next_hop))
        first = await next_of(connection.inbox)
        assert first.fields[1:] == ["sip", "", "", next_hop]
        assert first.sip is not None
        tag_match = re.search(rb";tag=([0-9a-f]{10})\r\n", first.sip)
        assert tag_match is not None
        tag = tag_match.group(1).decode()
        challenge = crlf(
            "SIP/2.0 407 Proxy Authentication Required\n"
            f"From: <sip:4415550100@sip.carrier.example>;tag={tag}\n"
            "To: <sip:4415550100@sip.carrier.example>;tag=p1\n"
            f"Call-ID: {CALL_ID}\n"
            "CSeq: 104729 REGISTER\n"
            'Proxy-Authenticate: Digest realm="proxy.example", nonce="abc123", opaque="op4", algorithm=MD5\n'
            "Content-Length: 0\n"
            "\n"
        )
        await connection.send(
            await accept(connection, first, "txn-a", "tcp")
            + carrier_response("txn-a", challenge, proto="tcp", source="203.0.113.99", port=5070)
        )
        retry = await next_of(connection.inbox)
        response = digest_response(
            username="4415550100", realm="proxy.example", nonce="abc123", uri="sip:sip.carrier.example", cnonce=None
        )
        authorization = (
            'Proxy-Authorization: Digest username="4415550100",realm="proxy.example",nonce="abc123",'
            f'uri="sip:sip.carrier.example",response="{response}",algorithm=MD5,opaque="op4"'
        )
        assert retry.frame == sent_frame(
            retry.msg_id, ("sip", "", "", next_hop), register_sip(tag, 104730, [authorization])
        )
        forbidden = crlf(f"SIP/2.0 403 Forbidden\nCall-ID: {CALL_ID}\nCSeq: 104730 REGISTER\nContent-Length: 0\n\n")
        await connection.send(
            await accept(connection, retry, "txn-b", "tcp") + carrier_response("txn-b", forbidden, proto="tcp")
        )
        answer = answer_of(await asyncio.wait_for(outcome, 3))
    assert (answer.status, answer.reason, answer.authenticated, answer.last_cseq) == (
        403,
        "403 Forbidden",
        True,
        104730,
    )
    assert (answer.expires_header, answer.contact_expires) == (None, None)


async def test_a_tcp_challenger_is_pinned_with_its_transport(peer: DrachtioPeer) -> None:
    front = make_front(peer.port)
    async with running(front, peer) as connection:
        outcome = await registering(front, command("sip:sip.carrier.example;transport=tcp"))
        first = await next_of(connection.inbox)
        assert first.sip is not None
        challenge = crlf(
            "SIP/2.0 401 Unauthorized\n"
            f"Call-ID: {CALL_ID}\n"
            "CSeq: 104729 REGISTER\n"
            'WWW-Authenticate: Digest realm="carrier.example", nonce="n2", qop="auth,auth-int"\n'
            "Content-Length: 0\n"
            "\n"
        )
        await connection.send(
            await accept(connection, first, "txn-c", "tcp")
            + carrier_response("txn-c", challenge, proto="tcp", source="203.0.113.11", port=5080)
        )
        retry = await next_of(connection.inbox)
        assert retry.fields[1:] == ["sip", "", "", "sip:203.0.113.11:5080;transport=tcp"]
        assert retry.sip is not None and b",qop=auth,nc=00000001," in retry.sip  # auth picked from the list
        accepted = crlf(f"SIP/2.0 200 OK\nCall-ID: {CALL_ID}\nCSeq: 104730 REGISTER\nExpires: 600\n\n")
        await connection.send(
            await accept(connection, retry, "txn-d", "tcp")
            + carrier_response("txn-d", accepted, proto="tcp", source="203.0.113.11", port=5080)
        )
        answer = answer_of(await asyncio.wait_for(outcome, 3))
    assert (answer.status, answer.expires_header, answer.source) == (200, 600, "203.0.113.11:5080")


async def test_a_stack_made_408_is_the_answer_and_nothing_is_retried(peer: DrachtioPeer) -> None:
    # section 7: Timer F's 408 comes as a response with bytes 0, no address and port 0
    front = make_front(peer.port)
    async with running(front, peer) as connection:
        outcome = await registering(front, command("sip:sip.carrier.example;transport=udp"))
        first = await next_of(connection.inbox)
        timeout = crlf(f"SIP/2.0 408 Request Timeout\nCall-ID: {CALL_ID}\nCSeq: 104729 REGISTER\nContent-Length: 0\n\n")
        leader = f"{uuid.uuid4()}|sip|network|0|||0|14:05:42.100000|txn-e||"
        await connection.send(await accept(connection, first, "txn-e") + frame(leader.encode() + b"\r\n" + timeout))
        answer = answer_of(await asyncio.wait_for(outcome, 3))
        await asyncio.sleep(0.05)
        assert connection.inbox.empty()
    assert (answer.status, answer.reason, answer.authenticated, answer.source) == (
        408,
        "408 Request Timeout",
        False,
        None,
    )
    assert answer.last_cseq == 104729
