"""Client transactions of the native front: Timer E retransmission over UDP, 408 on Timer F, TCP, TLS, and the
next located address when one gives no response at all (RFC 3263 4.3), within the request's timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from events import OutboundRegisterAnswered, OutboundRegisterRequested, StreamNames, stamp
from ingest import outbound
from ingest.fronts.front import OutboundRequest
from ingest.fronts.native import NativeFront
from ingest.fronts.native.client import HOP_FLOOR_S, hop_share_s
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


class Answering(asyncio.DatagramProtocol):
    """A UDP peer that records what arrives, with when, and answers each copy with `statuses` (none: silent)."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = statuses
        self.arrivals: list[tuple[float, SipRequest]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = parse_message(data)
        assert isinstance(request, SipRequest)
        self.arrivals.append((asyncio.get_running_loop().time(), request))
        assert self.transport is not None
        for status in self.statuses:
            answer = make_response(request, status, "Whatever", to_tag=None if status < 200 else "uas")
            self.transport.sendto(answer.serialize(), addr)


@asynccontextmanager
async def udp_peers(*peers: Answering) -> AsyncIterator[list[int]]:
    """Each peer bound on 127.0.0.1 at a port of its own: the ports."""
    loop = asyncio.get_running_loop()
    transports = []
    try:
        for peer in peers:
            transport, _ = await loop.create_datagram_endpoint(lambda peer=peer: peer, local_addr=("127.0.0.1", 0))  # type: ignore[misc]
            transports.append(transport)
        yield [transport.get_extra_info("sockname")[1] for transport in transports]
    finally:
        for transport in transports:
            transport.close()


def srv_records(transport: str, ports: list[int]) -> dict[tuple[str, str], list[str]]:
    """carrier.test's SRV records for a transport: one target per port, each of a lower priority (a higher
    number) than the one before, all at 127.0.0.1."""
    prefix = {"udp": "_sip._udp", "tcp": "_sip._tcp"}[transport]
    records = {
        (f"{prefix}.carrier.test", "SRV"): [
            f"{10 * (n + 1)} 0 {port} t{n}.carrier.test." for n, port in enumerate(ports)
        ]
    }
    records.update({(f"t{n}.carrier.test", "A"): ["127.0.0.1"] for n in range(len(ports))})
    return records


def options_by_srv(transport: str) -> OutboundRequest:
    return OutboundRequest(
        "OPTIONS",
        "sip:carrier.test",
        headers=[("From", "<sip:sbc@127.0.0.1>"), ("To", "<sip:carrier.test>")],
        next_hop=f"sip:carrier.test;transport={transport}",
    )


def without_branch(request: SipRequest) -> bytes:
    branch = request.top_via.branch or ""
    return request.serialize().replace(branch.encode(), b"<branch>")


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


def test_each_address_before_the_last_gets_an_equal_share_of_the_time_left_and_at_least_the_floor() -> None:
    assert hop_share_s(32.0, 1) == 32.0  # one address: all of Timer F, as without failover
    assert hop_share_s(32.0, 2) == 16.0
    assert hop_share_s(32.0, 4) == 8.0
    assert hop_share_s(32.0, 16) == HOP_FLOOR_S == 4.0  # not 2 s: four copies over UDP at least
    assert hop_share_s(3.0, 2) == 3.0  # never more than is left
    assert hop_share_s(0.5, 3) == 0.5


async def test_udp_moves_to_the_next_srv_target_when_the_first_gives_no_response() -> None:
    # RFC 3263 4.3 over UDP: the priority 10 target's port is bound and reads, but never answers; after its share
    # of the 8 s (4 s: copies at 0, 0.5, 1.5 and 3.5 s), the same request, on a new branch, goes to priority 20
    silent, answering = Answering(), Answering(100, 200)
    loop = asyncio.get_running_loop()
    async with udp_peers(silent, answering) as ports, dns_server(srv_records("udp", ports)) as (_, dns_port):
        locator = SipLocator([("127.0.0.1", dns_port)])
        async with NativeFront([SipListen("udp", "127.0.0.1", free_port())], locator=locator) as front:
            started = loop.time()
            answer = await front.exchange(options_by_srv("udp"), timeout_s=8)
            took_s = loop.time() - started
            await asyncio.sleep(0.6)  # nothing more goes to either
    assert answer.response.status == 200
    assert answer.source == ("udp", "127.0.0.1", ports[1])
    assert answer.unanswered == (("udp", "127.0.0.1", ports[0]),)
    assert 3.9 <= took_s < 4.5, took_s
    times = [at - started for at, _ in silent.arrivals]
    assert len(times) == 4 and [round(t, 1) for t in times] == [0.0, 0.5, 1.5, 3.5], times
    assert len({request.serialize() for _, request in silent.arrivals}) == 1  # one transaction, retransmitted
    [(second_at, second)] = answering.arrivals
    assert 3.9 <= second_at - started < 4.3
    first = silent.arrivals[0][1]
    assert second.top_via.branch != first.top_via.branch  # a new transaction ...
    assert without_branch(second) == without_branch(first)  # ... of the same request


async def test_any_response_ends_the_search_a_503_at_once_and_a_provisional_one_with_the_whole_time() -> None:
    refusing, provisional, never = Answering(503), Answering(100), Answering(200)
    loop = asyncio.get_running_loop()
    async with udp_peers(refusing, provisional, never) as ports:
        async with dns_server(srv_records("udp", [ports[0], ports[2]])) as (_, dns_port):
            locator = SipLocator([("127.0.0.1", dns_port)])
            async with NativeFront([SipListen("udp", "127.0.0.1", free_port())], locator=locator) as front:
                answer = await front.exchange(options_by_srv("udp"), timeout_s=8)
        assert answer.response.status == 503 and answer.source == ("udp", "127.0.0.1", ports[0])
        assert answer.unanswered == () and len(refusing.arrivals) == 1 and never.arrivals == []

        # a 100 Trying but no final response: the address is there, so it keeps the whole 6 s (not its 4 s share)
        # and the next one gets nothing; Timer E copies every T2 (4 s) once the provisional came
        async with dns_server(srv_records("udp", [ports[1], ports[2]])) as (_, dns_port):
            locator = SipLocator([("127.0.0.1", dns_port)])
            async with NativeFront([SipListen("udp", "127.0.0.1", free_port())], locator=locator) as front:
                started = loop.time()
                answer = await front.exchange(options_by_srv("udp"), timeout_s=6)
                took_s = loop.time() - started
    assert answer.response.status == 408 and answer.source is None and answer.unanswered == ()
    assert 5.9 <= took_s < 6.5, took_s
    assert [round(at - started, 1) for at, _ in provisional.arrivals] == [0.0, 0.5, 4.5]
    assert never.arrivals == []


async def test_tcp_moves_on_from_a_refused_connection_and_from_one_that_never_answers() -> None:
    got: dict[str, list[SipRequest]] = {"silent": [], "answering": []}

    def server(
        name: str, status: int | None
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    request = parse_message(await reader.readuntil(b"\r\n\r\n"))
                    assert isinstance(request, SipRequest)
                    got[name].append(request)
                    if status is not None:
                        writer.write(make_response(request, status, "OK", to_tag="uas").serialize())
                        await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        return serve

    silent = await asyncio.start_server(server("silent", None), "127.0.0.1", 0)
    answering = await asyncio.start_server(server("answering", 200), "127.0.0.1", 0)
    refused = free_port()  # nothing listens there
    ports = [refused, silent.sockets[0].getsockname()[1], answering.sockets[0].getsockname()[1]]
    loop = asyncio.get_running_loop()
    async with silent, answering, dns_server(srv_records("tcp", ports)) as (_, dns_port):
        locator = SipLocator([("127.0.0.1", dns_port)])
        async with NativeFront([SipListen("udp", "127.0.0.1", free_port())], locator=locator) as front:
            started = loop.time()
            answer = await front.exchange(options_by_srv("tcp"), timeout_s=8)
            took_s = loop.time() - started
        with pytest.raises(
            ConnectionError, match=rf"^cannot connect over tcp to carrier\.test: 127\.0\.0\.1:{refused} "
        ):
            async with NativeFront([SipListen("udp", "127.0.0.1", free_port())], locator=locator) as front:
                await front.exchange(options_to(refused, "tcp"), timeout_s=8)  # a refused connection is no 408
    assert answer.response.status == 200 and answer.source == ("tcp", "127.0.0.1", ports[2])
    assert answer.unanswered == (("tcp", "127.0.0.1", ports[1]),)  # the refused one is a failure, not silence
    assert 3.9 <= took_s < 4.5, took_s  # refused at once, then half of the 8 s to the silent one
    [first], [second] = got["silent"], got["answering"]
    assert second.top_via.branch != first.top_via.branch and without_branch(second) == without_branch(first)
