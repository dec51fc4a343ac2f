"""Client transactions of the native front: Timer E retransmission over UDP, 408 on Timer F, TCP."""

from __future__ import annotations

import asyncio

import pytest

from events import OutboundRegisterAnswered, OutboundRegisterRequested, StreamNames, stamp
from ingest import outbound
from ingest.fronts.front import OutboundRequest
from ingest.fronts.native import NativeFront
from ingest.sip import SipRequest, make_response, parse_message
from runtime.handling import Delivery
from runtime.sealed import Sealer
from runtime.settings import SipListen
from tests.conftest import free_port


class Peer(asyncio.DatagramProtocol):
    """A UAS that drops the first `drop` copies of a request, then answers 200."""

    def __init__(self, drop: int) -> None:
        self.drop = drop
        self.copies: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.copies.append(data)
        if len(self.copies) <= self.drop:
            return
        request = parse_message(data)
        assert isinstance(request, SipRequest)
        assert self.transport is not None
        self.transport.sendto(make_response(request, 100, "Trying").serialize(), addr)
        self.transport.sendto(make_response(request, 200, "OK", [("Expires", "600")], to_tag="uas").serialize(), addr)


def options_to(port: int, transport: str = "udp") -> OutboundRequest:
    return OutboundRequest(
        "OPTIONS",
        f"sip:127.0.0.1:{port};transport={transport}",
        headers=[("From", "<sip:sbc@127.0.0.1>"), ("To", f"<sip:127.0.0.1:{port}>")],
    )


async def test_udp_request_is_retransmitted_until_answered() -> None:
    loop = asyncio.get_running_loop()
    peer = Peer(drop=2)
    transport, _ = await loop.create_datagram_endpoint(lambda: peer, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        async with NativeFront([SipListen("udp", "127.0.0.1", free_port())]) as front:
            response = await front.send_request(options_to(port), timeout_s=8)
    finally:
        transport.close()
    assert response.status == 200 and response.headers.get("Expires") == "600"
    assert len(peer.copies) == 3 and len(set(peer.copies)) == 1  # the same request, retransmitted
    sent = parse_message(peer.copies[0])
    assert isinstance(sent, SipRequest)
    assert sent.top_via.branch is not None and sent.top_via.branch.startswith("z9hG4bK")
    assert sent.headers.get("CSeq") == "1 OPTIONS" and sent.headers.get("Max-Forwards") == "70"
    assert ";tag=" in (sent.headers.get("From") or "")


async def test_no_answer_gives_408() -> None:
    loop = asyncio.get_running_loop()
    peer = Peer(drop=1000)
    transport, _ = await loop.create_datagram_endpoint(lambda: peer, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        async with NativeFront([SipListen("udp", "127.0.0.1", free_port())]) as front:
            response = await front.send_request(options_to(port), timeout_s=1.2)
    finally:
        transport.close()
    assert response.status == 408
    assert len(peer.copies) >= 2  # 0 ms and 500 ms at least


async def test_tcp_request_gets_its_final_response() -> None:
    async def uas(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request = parse_message(head)
        assert isinstance(request, SipRequest)
        writer.write(make_response(request, 180, "Ringing").serialize())
        writer.write(make_response(request, 403, "Forbidden", to_tag="x").serialize())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(uas, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        async with NativeFront([SipListen("udp", "127.0.0.1", free_port())]) as front:
            response = await front.send_request(options_to(port, "tcp"), timeout_s=5)
    assert response.status == 403


async def test_register_nobody_answers_is_answered_408_when_timer_f_fires(monkeypatch: pytest.MonkeyPatch) -> None:
    # the edge's REGISTER (ingest/outbound.py) over the native front to a UDP port that reads and never
    # answers; Timer F is the edge's transaction timeout (32 s), shortened here to 2 s: Timer E copies
    # at 0, T1 and 3*T1 (T1 = 500 ms), none when Timer F fires, then the 408 is the answer
    monkeypatch.setattr(outbound, "TRANSACTION_TIMEOUT_S", 2.0)
    loop = asyncio.get_running_loop()
    peer = Peer(drop=1000)
    arrivals: list[float] = []
    received = peer.datagram_received

    def timed(data: bytes, addr: tuple[str, int]) -> None:
        arrivals.append(loop.time())
        received(data, addr)

    peer.datagram_received = timed  # type: ignore[method-assign]
    transport, _ = await loop.create_datagram_endpoint(lambda: peer, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    names = StreamNames("native-408")
    sealer = Sealer("secret")
    command = OutboundRegisterRequested(
        **stamp(),
        attempt_id="attempt-408",
        voip_carrier_sid="carrier-1",
        sip_gateway_sid="gateway-1",
        carrier_name="Carrier",
        request_uri="sip:127.0.0.1",
        next_hop=f"sip:127.0.0.1:{port};transport=udp",
        from_uri="sip:trunk@127.0.0.1",
        contact="<sip:trunk@localhost;transport=udp>;expires=600",
        call_id="call-408",
        cseq=7,
        expires_s=600,
        user_agent="sidecar",
        username="trunk",
        password_sealed=sealer.seal("pw"),
        gateway_host="127.0.0.1",
    )
    try:
        async with NativeFront([SipListen("udp", "127.0.0.1", free_port())]) as front:
            edge = outbound.OutboundRegistrations(front, names, sealer, "edge-1")
            [step] = await edge.begin([Delivery(names.commands, "1-0", command)])
            assert asyncio.iscoroutine(step)
            started = loop.time()
            outcome = await step
            ended = loop.time()
            await asyncio.sleep(0.3)  # nothing more arrives after the 408
    finally:
        transport.close()
    [(stream, answer)] = outcome.appends
    assert stream == names.carriers and isinstance(answer, OutboundRegisterAnswered)
    assert (answer.status, answer.reason, answer.authenticated) == (408, "408 Request Timeout", False)
    assert (answer.first_cseq, answer.last_cseq, answer.call_id) == (7, 7, "call-408")
    assert 1.9 <= ended - started < 2.5
    assert len(peer.copies) == 3 and len(set(peer.copies)) == 1  # one request, retransmitted as is
    sent = parse_message(peer.copies[0])
    assert isinstance(sent, SipRequest) and sent.method == "REGISTER" and sent.headers.get("CSeq") == "7 REGISTER"
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    assert 0.4 <= gaps[0] < 0.7 and 0.9 <= gaps[1] < 1.2  # T1, then 2*T1
