"""Client transactions of the native front: Timer E retransmission over UDP, 408 on Timer F, TCP, TLS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from events import OutboundRegisterAnswered, OutboundRegisterRequested, StreamNames, stamp
from ingest import outbound
from ingest.fronts.front import OutboundRequest
from ingest.fronts.native import NativeFront
from ingest.locator import SipLocator
from ingest.sip import SipRequest, make_response, parse_message
from runtime.handling import Delivery
from runtime.sealed import Sealer
from runtime.settings import SipListen
from tests.certs import self_signed
from tests.conftest import free_port
from tests.dnsserver import dns_server
from tests.sipserver import carrier_server


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


async def test_options_over_tls_share_one_connection_and_verify_the_carrier_as_configured(tmp_path: Path) -> None:
    # the gateway pings (and REGISTERs) of the native front over TLS: Via SIP/2.0/TLS naming the TLS listener,
    # one connection for both requests, the carrier's certificate unchecked by default (as drachtio's sofia),
    # checked against a CA file and the gateway's name (sent as SNI) when asked, refused by the system's store
    sbc_cert, sbc_key = self_signed(tmp_path)
    carrier_cert, carrier_key = self_signed(tmp_path, ("carrier.test", "127.0.0.1"))
    records = {("carrier.test", "A"): ["127.0.0.1"]}
    async with (
        carrier_server(realm="carrier.test", username="u", password="p", tls=(carrier_cert, carrier_key)) as carrier,
        dns_server(records) as (_, dns_port),
    ):
        tls_port = free_port()
        listen = [SipListen("udp", "127.0.0.1", free_port()), SipListen("tls", "127.0.0.1", tls_port)]
        async with NativeFront(listen, tls_cert=sbc_cert, tls_key=sbc_key) as front:
            first = await front.exchange(options_to(carrier.port, "tls"), timeout_s=5)
            second = await front.send_request(options_to(carrier.port, "tls"), timeout_s=5)
        assert first.response.status == 200 and second.status == 200
        assert first.source == ("tls", "127.0.0.1", carrier.port)
        assert [r.connection for r in carrier.received] == [1, 1]  # the connection was kept and used again
        via = carrier.received[0].header("Via") or ""
        assert via.startswith(f"SIP/2.0/TLS 127.0.0.1:{tls_port};branch=z9hG4bK"), via
        assert carrier.server_names == [None]  # an IP address is not sent as SNI

        by_name = OutboundRequest(
            "OPTIONS",
            f"sip:carrier.test:{carrier.port}",
            headers=[("From", "<sip:sbc@127.0.0.1>"), ("To", "<sip:carrier.test>")],
            next_hop=f"sip:carrier.test:{carrier.port};transport=tls",
        )
        locator = SipLocator([("127.0.0.1", dns_port)])
        udp = [SipListen("udp", "127.0.0.1", free_port())]
        async with NativeFront(udp, tls_verify=carrier_cert, locator=locator) as front:
            assert (await front.send_request(by_name, timeout_s=5)).status == 200
        assert carrier.server_names[-1] == "carrier.test"
        udp = [SipListen("udp", "127.0.0.1", free_port())]
        async with NativeFront(udp, tls_verify="system", locator=locator) as front:
            with pytest.raises(ConnectionError, match="certificate verify failed"):
                await front.send_request(by_name, timeout_s=5)
        assert len(carrier.received) == 3  # nothing was sent over the refused connection
