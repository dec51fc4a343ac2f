"""DrachtioFront against a drachtio-server protocol peer written here from DRACHTIO.md, byte for byte.

The peer is an asyncio TCP server on an ephemeral loopback port. It reads frames with its own code
(not the front's decoder), checks the secret, answers authenticate/route/ping as sections 3, 4 and 9
say, delivers requests and responses with the leaders of sections 5 and 7, and keeps every message
the app sent. The worked examples of section 14 are compared byte for byte, with only the app's
random message id swapped in (a UUID, so the length prefixes stay the doc's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from ingest.fronts.drachtio import (
    DrachtioCommandError,
    DrachtioConnectionError,
    DrachtioFront,
    DrachtioRequest,
    FrameTooLargeError,
    PublicSipAddresses,
)
from ingest.fronts.front import IncomingRequest, OutboundRequest, TransportFacts
from ingest.sip import SipResponse

SECRET = "cymru"
HOSTPORTS = "udp/198.51.100.7:5060,tcp/198.51.100.7:5060"
LOCAL_HOSTPORTS = "udp/10.0.0.7:5060,tcp/10.0.0.7:5060,tcp/172.16.3.3:5070,tcp/203.0.113.1:5060"
CIDRS = ("192.168.0.0/24", "172.16.0.0/16", "10.0.0.0/8")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
WAIT_S = 3.0
T = TypeVar("T")


def crlf(text: str) -> bytes:
    """A doc block as bytes: every line break is CRLF."""
    return text.replace("\n", "\r\n").encode()


# DRACHTIO.md 14.3: the incoming REGISTER, exact frame.
REGISTER_TXN = "6f1d2c3b-4a59-4687-b7a6-c5d4e3f20100"
REGISTER_FRAME = crlf(
    "517#d41d8cd9-8f00-4b20-9e98-00998ecf8427|sip|network|370|udp|192.0.2.44|5062|14:03:27.512034|"
    "6f1d2c3b-4a59-4687-b7a6-c5d4e3f20100||198.51.100.7|5060|\n"
    "REGISTER sip:198.51.100.7 SIP/2.0\n"
    "Via: SIP/2.0/UDP 192.0.2.44:5062;branch=z9hG4bK-524287-1;rport=5062\n"
    "Max-Forwards: 70\n"
    "From: <sip:alice@example.com>;tag=a73kszlfl\n"
    "To: <sip:alice@example.com>\n"
    "Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.44\n"
    "CSeq: 1 REGISTER\n"
    "Contact: <sip:alice@192.0.2.44:5062;transport=udp>\n"
    "Expires: 3600\n"
    "User-Agent: ExamplePhone/1.0\n"
    "Content-Length: 0\n"
    "\n"
)
# 14.4: the app's 401 and the server's ack of it.
APP_401_ID = "c0ffee00-1111-4222-8333-444455556666"
APP_401_FRAME = crlf(
    "352#c0ffee00-1111-4222-8333-444455556666|sip|6f1d2c3b-4a59-4687-b7a6-c5d4e3f20100|\n"
    "SIP/2.0 401 Unauthorized\n"
    "Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.44\n"
    "CSeq: 1 REGISTER\n"
    "From: <sip:alice@example.com>;tag=a73kszlfl\n"
    "To: <sip:alice@example.com>\n"
    'WWW-Authenticate: Digest realm="example.com", nonce="5f2a9c1e7b3d", algorithm=MD5, qop="auth"\n'
    "Content-Length: 0\n"
    "\n"
)
ACK_401_FRAME = crlf(
    "548#2b3c4d5e-6f70-4182-93a4-b5c6d7e8f901|response|c0ffee00-1111-4222-8333-444455556666|OK|application|"
    "359|udp|192.0.2.44|5062|14:03:27.513880|6f1d2c3b-4a59-4687-b7a6-c5d4e3f20100|||Msg sent:|\n"
    "SIP/2.0 401 Unauthorized\n"
    "Via: SIP/2.0/UDP 192.0.2.44:5062;branch=z9hG4bK-524287-1;rport=5062\n"
    "From: <sip:alice@example.com>;tag=a73kszlfl\n"
    "To: <sip:alice@example.com>;tag=Kp3N8vQ2rH6jD\n"
    "Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.44\n"
    "CSeq: 1 REGISTER\n"
    'WWW-Authenticate: Digest realm="example.com", nonce="5f2a9c1e7b3d", algorithm=MD5, qop="auth"\n'
    "Content-Length: 0\n"
    "\n"
)
# 14.5: the retried REGISTER arrives like 14.3 with a new transaction; the app answers 200.
REGISTER2_TXN = "8a7b6c5d-4e3f-4201-9f8e-7d6c5b4a3928"
REGISTER2_SIP = crlf(
    "REGISTER sip:198.51.100.7 SIP/2.0\n"
    "Via: SIP/2.0/UDP 192.0.2.44:5062;branch=z9hG4bK-524287-2;rport=5062\n"
    "Max-Forwards: 70\n"
    "From: <sip:alice@example.com>;tag=a73kszlfl\n"
    "To: <sip:alice@example.com>\n"
    "Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.44\n"
    "CSeq: 2 REGISTER\n"
    "Contact: <sip:alice@192.0.2.44:5062;transport=udp>\n"
    "Expires: 3600\n"
    'Authorization: Digest username="alice", realm="example.com", nonce="5f2a9c1e7b3d", '
    'uri="sip:198.51.100.7", response="00000000000000000000000000000000", algorithm=MD5\n'
    "Content-Length: 0\n"
    "\n"
)
APP_200_ID = "decafbad-2222-4333-8444-555566667777"
APP_200_FRAME = crlf(
    "349#decafbad-2222-4333-8444-555566667777|sip|8a7b6c5d-4e3f-4201-9f8e-7d6c5b4a3928|\n"
    "SIP/2.0 200 OK\n"
    "Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.44\n"
    "CSeq: 2 REGISTER\n"
    "From: <sip:alice@example.com>;tag=a73kszlfl\n"
    "To: <sip:alice@example.com>\n"
    "Contact: <sip:alice@192.0.2.44:5062;transport=udp>;expires=3600\n"
    "Date: Thu, 26 Nov 2026 14:03:27 GMT\n"
    "Content-Length: 0\n"
    "\n"
)
# 14.9
UNKNOWN_TRANSACTION = "Response not sent due to unknown transaction"
NOK_FRAME = (
    b"131#5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d|response|decafbad-2222-4333-8444-555566667777|NOK|"
    b"Response not sent due to unknown transaction"
)
# 14.6: the app's REGISTER to a carrier and the server's ack with the new transaction id.
APP_REGISTER_ID = "b16b00b5-aaaa-4bbb-8ccc-dddddddddddd"
APP_REGISTER_FRAME = crlf(
    "244#b16b00b5-aaaa-4bbb-8ccc-dddddddddddd|sip||\n"
    "REGISTER sip:sip.carrier.example SIP/2.0\n"
    "From: <sip:4415550100@sip.carrier.example>\n"
    "To: <sip:4415550100@sip.carrier.example>\n"
    "Contact: <sip:4415550100@localhost>\n"
    "Expires: 600\n"
    "Content-Length: 0\n"
    "\n"
)
ACK_REGISTER_FRAME = crlf(
    "568#e1f2a3b4-c5d6-4e7f-8091-a2b3c4d5e6f7|response|b16b00b5-aaaa-4bbb-8ccc-dddddddddddd|OK|application|"
    "379|udp|198.51.100.7|5060|14:05:10.004211|0d1e2f30-4152-4637-8899-aabbccddeeff|Msg sent:|\n"
    "REGISTER sip:sip.carrier.example SIP/2.0\n"
    "Via: SIP/2.0/UDP 198.51.100.7;rport;branch=z9hG4bKv3yX1a8Qm2tZp\n"
    "Max-Forwards: 70\n"
    "From: <sip:4415550100@sip.carrier.example>;tag=Q9rS0tU1vW2xY\n"
    "To: <sip:4415550100@sip.carrier.example>\n"
    "Call-ID: 5c8a1e22-6409-1240-81b7-6a2d58cd4660\n"
    "CSeq: 104729 REGISTER\n"
    "Contact: <sip:4415550100@198.51.100.7:5060>\n"
    "Expires: 600\n"
    "Content-Length: 0\n"
    "\n"
)
# 14.7: the carrier's challenge, then the app's retry (SIP part; see test for the leader).
CHALLENGE_FRAME = crlf(
    "552#4a5b6c7d-8e9f-4a0b-9c1d-2e3f4a5b6c7d|sip|network|421|udp|203.0.113.10|5060|14:05:10.031877|"
    "0d1e2f30-4152-4637-8899-aabbccddeeff||\n"
    "SIP/2.0 401 Unauthorized\n"
    "Via: SIP/2.0/UDP 198.51.100.7;rport=5060;branch=z9hG4bKv3yX1a8Qm2tZp;received=198.51.100.7\n"
    "From: <sip:4415550100@sip.carrier.example>;tag=Q9rS0tU1vW2xY\n"
    "To: <sip:4415550100@sip.carrier.example>;tag=as1f2e3d4c\n"
    "Call-ID: 5c8a1e22-6409-1240-81b7-6a2d58cd4660\n"
    "CSeq: 104729 REGISTER\n"
    'WWW-Authenticate: Digest realm="carrier.example", nonce="7d9e1f", algorithm=MD5, qop="auth"\n'
    "Content-Length: 0\n"
    "\n"
)
AUTHORIZATION = (
    'Digest username="4415550100",realm="carrier.example",nonce="7d9e1f",uri="sip:sip.carrier.example",'
    'response="d4bc7d106f17210361a734976a09dbd1",algorithm=MD5,qop=auth,nc=00000001,cnonce="9b8c7d6e"'
)
RETRY_SIP = crlf(
    "REGISTER sip:sip.carrier.example SIP/2.0\n"
    "From: <sip:4415550100@sip.carrier.example>;tag=Q9rS0tU1vW2xY\n"
    "To: <sip:4415550100@sip.carrier.example>\n"
    "Call-ID: 5c8a1e22-6409-1240-81b7-6a2d58cd4660\n"
    "CSeq: 104730 REGISTER\n"
    "Contact: <sip:4415550100@localhost>\n"
    "Expires: 600\n"
    f"Authorization: {AUTHORIZATION}\n"
    "Content-Length: 0\n"
    "\n"
)
RETRY_TXN = "11223344-5566-4778-899a-abbccddeeff0"
# 14.8
CARRIER_200_FRAME = crlf(
    "506#99aabbcc-ddee-4f00-8112-233445566778|sip|network|375|udp|203.0.113.10|5060|14:05:10.067402|"
    "11223344-5566-4778-899a-abbccddeeff0||\n"
    "SIP/2.0 200 OK\n"
    "Via: SIP/2.0/UDP 198.51.100.7;rport=5060;branch=z9hG4bKc4dE5fG6hI7jK;received=198.51.100.7\n"
    "From: <sip:4415550100@sip.carrier.example>;tag=Q9rS0tU1vW2xY\n"
    "To: <sip:4415550100@sip.carrier.example>;tag=as7a8b9c0d\n"
    "Call-ID: 5c8a1e22-6409-1240-81b7-6a2d58cd4660\n"
    "CSeq: 104730 REGISTER\n"
    "Contact: <sip:4415550100@198.51.100.7:5060>;expires=600\n"
    "Content-Length: 0\n"
    "\n"
)
OPTIONS_SIP = crlf(
    "OPTIONS sip:198.51.100.7:5060 SIP/2.0\n"
    "Via: SIP/2.0/TCP 10.0.0.21:40412;branch=z9hG4bK-opt-1;rport=40412\n"
    "Max-Forwards: 70\n"
    "From: <sip:fs@10.0.0.21>;tag=fs1\n"
    "To: <sip:198.51.100.7:5060>\n"
    "Call-ID: opt-1@10.0.0.21\n"
    "CSeq: 7 OPTIONS\n"
    "X-FS-Status: open\n"
    "Content-Length: 0\n"
    "\n"
)


def frame(payload: bytes) -> bytes:
    return str(len(payload)).encode() + b"#" + payload


def network_request(txn: str, sip: bytes, *, proto: str = "udp", src: str = "192.0.2.44", port: int = 5062) -> bytes:
    """A section 5 delivery of a new request: 13 fields, receivedOn, trailing `|`."""
    meta = f"sip|network|{len(sip)}|{proto}|{src}|{port}|14:03:27.512034"
    leader = f"{uuid.uuid4()}|{meta}|{txn}||198.51.100.7|5060|"
    return frame(leader.encode() + b"\r\n" + sip)


def network_response(txn: str, sip: bytes) -> bytes:
    """A section 7 delivery of a response: 11 fields, no receivedOn."""
    leader = f"{uuid.uuid4()}|sip|network|{len(sip)}|udp|203.0.113.10|5060|14:05:10.067402|{txn}||"
    return frame(leader.encode() + b"\r\n" + sip)


def with_id(doc_frame: bytes, doc_id: str, app_id: str) -> bytes:
    assert len(doc_id) == len(app_id)
    return doc_frame.replace(doc_id.encode(), app_id.encode())


@dataclass
class AppMessage:
    """One message the app sent, as the peer read it."""

    frame: bytes
    payload: bytes
    fields: list[str]
    sip: bytes | None

    @property
    def msg_id(self) -> str:
        return self.fields[0]


@dataclass
class PeerConnection:
    """The server side of one app connection."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pending: dict[str, PeerConnection]  # the server's: transaction id -> the connection it was delivered on
    log: list[AppMessage] = field(default_factory=list)
    inbox: asyncio.Queue[AppMessage] = field(default_factory=asyncio.Queue)
    routes: list[str] = field(default_factory=list)
    routed: asyncio.Event = field(default_factory=asyncio.Event)
    pings: int = 0
    accepted_at: float = field(default_factory=time.time)
    routed_at: float = 0.0

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def deliver(self, txn: str, sip: bytes) -> bytes:
        """The section 5 frame of a new request; from now on the server holds `txn` until it is answered."""
        self.pending[txn] = self
        return network_request(txn, sip)

    async def reply(self, app_id: str, *fields: str) -> None:
        await self.send(frame("|".join((str(uuid.uuid4()), "response", app_id, *fields)).encode()))

    def drop(self) -> None:
        self.writer.close()


class ResetTolerantReader(asyncio.StreamReader):
    """What was read before the connection failed stays readable, and the failure reads as the end.

    (asyncio's reader drops it.) An app that closes with unread data sends a reset, and the server
    still acts on the frames it had read.
    """

    def set_exception(self, exc: BaseException) -> None:
        if isinstance(exc, ConnectionError):
            self.feed_eof()
        else:
            super().set_exception(exc)


class DrachtioPeer:
    """The server end of the control protocol, enough of it for a registrar."""

    def __init__(self, secret: str = SECRET, *, version: str = "v0.9.10", local_hostports: str = LOCAL_HOSTPORTS):
        self.secret = secret
        self.version = version
        self.local_hostports = local_hostports
        self.answer_pings = True
        self.ack_answers = False  # acknowledge the app's SIP responses at once (section 6)
        # Section 12 says a reconnecting app cannot use the old transaction ids; section 5 that the
        # server keeps an unanswered request 64 s; its code looks requests up by id alone. False: the first.
        self.transactions_outlive_links = False
        self.pending: dict[str, PeerConnection] = {}
        self.answered: set[str] = set()
        self.route_reply_delay_s = 0.0
        self.auth_attempts = 0
        self.connections: list[PeerConnection] = []
        self.ready_connections: asyncio.Queue[PeerConnection] = asyncio.Queue()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        def connection_made() -> asyncio.StreamReaderProtocol:
            return asyncio.StreamReaderProtocol(ResetTolerantReader(), self._serve)

        self.server = await asyncio.get_running_loop().create_server(connection_made, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for connection in self.connections:
            connection.drop()
        await self.server.wait_closed()

    async def next_connection(self) -> PeerConnection:
        async with asyncio.timeout(WAIT_S):
            return await self.ready_connections.get()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = PeerConnection(reader, writer, self.pending)
        self.connections.append(connection)
        app_gone = False  # the app closed: what it wrote before still arrives, nothing goes back
        try:
            while True:
                message = await self._read(reader)
                connection.log.append(message)
                if app_gone:
                    continue
                try:
                    if not await self._answer(connection, message):
                        break
                except ConnectionError:
                    app_gone = True
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> AppMessage:
        digits = (await reader.readuntil(b"#"))[:-1]
        assert digits.isdigit() and len(digits) <= 5, f"bad length specifier {digits!r}"
        payload = await reader.readexactly(int(digits))
        leader, sep, sip = payload.partition(b"\r\n")
        return AppMessage(digits + b"#" + payload, payload, leader.decode().split("|"), sip if sep else None)

    async def _answer(self, connection: PeerConnection, message: AppMessage) -> bool:
        kind = message.fields[1]
        if kind == "authenticate":
            self.auth_attempts += 1
            if message.fields[2] != self.secret:
                await connection.reply(message.msg_id, "NO", "incorrect secret")
                return False  # the server closes the socket after a bad secret
            await connection.reply(message.msg_id, "OK", HOSTPORTS, self.version, self.local_hostports)
        elif kind == "route":
            await asyncio.sleep(self.route_reply_delay_s)
            connection.routes.append(message.fields[2])
            await connection.reply(message.msg_id, "OK")
            if connection.routes == ["register", "options"]:
                connection.routed_at = time.time()
                connection.routed.set()
                self.ready_connections.put_nowait(connection)
        elif kind == "ping":
            connection.pings += 1
            if self.answer_pings:
                await connection.reply(message.msg_id, "OK", "pong")
        else:
            connection.inbox.put_nowait(message)
            if self.ack_answers and message.sip is not None and message.sip.startswith(b"SIP/2.0 "):
                await self._acknowledge(connection, message)
        return True

    async def _acknowledge(self, connection: PeerConnection, message: AppMessage) -> None:
        """Section 6's `OK ... Msg sent:` for an answer, or 14.9's NOK when the server holds no such request.

        Only transactions handed out with `deliver` are tracked; the others count as held by this connection.
        """
        assert message.sip is not None
        txn = message.fields[2]
        holder = self.pending.get(txn, connection) if txn not in self.answered else None
        if holder is connection or (holder is not None and self.transactions_outlive_links):
            self.pending.pop(txn, None)
            if not message.sip.startswith(b"SIP/2.0 1"):
                self.answered.add(txn)
            meta = ("application", str(len(message.sip)), "udp", "192.0.2.44", "5062", "14:03:27.513880", txn)
            leader = "|".join((str(uuid.uuid4()), "response", message.msg_id, "OK", *meta, "", "", "Msg sent:", ""))
            await connection.send(frame(leader.encode() + b"\r\n" + message.sip))
        else:
            await connection.reply(message.msg_id, "NOK", UNKNOWN_TRANSACTION)


@pytest.fixture
async def peer() -> AsyncIterator[DrachtioPeer]:
    server = DrachtioPeer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def make_front(port: int, secret: str = SECRET, **options: float) -> DrachtioFront:
    settings: dict[str, float] = {
        "reconnect_initial_s": 0.01,
        "reconnect_max_s": 0.05,
        "request_timeout_s": 1.0,
    }
    settings.update(options)
    return DrachtioFront("127.0.0.1", port, secret, network_cidrs=CIDRS, **settings)


@contextlib.asynccontextmanager
async def running(front: DrachtioFront, peer: DrachtioPeer) -> AsyncIterator[PeerConnection]:
    async with front:
        connection = await peer.next_connection()
        await front.wait_ready(WAIT_S)
        yield connection


Outcome = tuple[IncomingRequest, BaseException | None]


def answering(
    outcomes: asyncio.Queue[Outcome], status: int, reason: str, headers: list[tuple[str, str]] | None = None
) -> Callable[[IncomingRequest], Awaitable[None]]:
    """A handler that answers every request the same way and reports how `respond` went."""

    async def handle(request: IncomingRequest) -> None:
        try:
            await request.respond(status, reason, headers or [])
        except Exception as exc:
            outcomes.put_nowait((request, exc))
            return
        outcomes.put_nowait((request, None))

    return handle


async def next_of(queue: asyncio.Queue[T]) -> T:
    async with asyncio.timeout(WAIT_S):
        return await queue.get()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 - polling state the peer and front expose, in tests only
            await asyncio.sleep(0.005)


# -- connection, authentication, routes -------------------------------------------------------


async def test_authenticates_then_routes_register_and_options(peer: DrachtioPeer) -> None:
    front = make_front(peer.port)
    assert not front.ready
    async with running(front, peer) as connection:
        auth, route_register, route_options = connection.log[:3]
        assert re.fullmatch(rf"{UUID}\|authenticate\|cymru\|", auth.payload.decode())
        assert auth.frame == frame(auth.payload) and auth.frame.startswith(b"56#")  # 14.1
        assert re.fullmatch(rf"51#{UUID}\|route\|register", route_register.frame.decode())  # 14.2
        assert re.fullmatch(rf"50#{UUID}\|route\|options", route_options.frame.decode())
        assert len({auth.msg_id, route_register.msg_id, route_options.msg_id}) == 3
        assert front.ready
        assert front.sbc_address == HOSTPORTS
        assert front.private_sbc_address == "172.16.3.3:5070"  # last tcp entry inside the CIDRs
        assert front.server_version == "v0.9.10"
        assert front.public_addresses == PublicSipAddresses(udp="198.51.100.7:5060", tls="198.51.100.7:5061")
        assert front.stats.frames_out == 3 and front.stats.frames_in == 3 and front.stats.reconnects == 0
    assert not front.ready


async def test_not_ready_until_the_routes_are_acknowledged(peer: DrachtioPeer) -> None:
    peer.route_reply_delay_s = 0.2
    async with make_front(peer.port) as front:
        await until(lambda: bool(peer.connections) and len(peer.connections[0].log) >= 2)
        assert not front.ready
        await front.wait_ready(WAIT_S)
        assert front.ready


async def test_wrong_secret_is_an_error_log_and_retried_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = DrachtioPeer(secret="the-right-one")
    await server.start()
    caplog.set_level(logging.DEBUG, logger="ingest.fronts.drachtio")
    try:
        async with make_front(server.port, secret="s3cr3t-wrong") as front:
            await until(lambda: server.auth_attempts >= 3)
            assert not front.ready
            assert front.stats.reconnects >= 2
    finally:
        await server.close()
    assert all(connection.routes == [] for connection in server.connections)
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert errors and f"127.0.0.1 port={server.port}" in errors[0].getMessage()
    assert "DRACHTIO_SECRET" in errors[0].getMessage()
    assert "s3cr3t-wrong" not in caplog.text


async def test_reconnects_and_routes_again_after_the_server_drops_the_link(
    peer: DrachtioPeer, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    front = make_front(peer.port)
    front.set_handler(answering(outcomes, 200, "OK"))
    async with running(front, peer) as first:
        await first.send(network_request("t-before", OPTIONS_SIP))
        await next_of(first.inbox)  # the answer went out; drachtio's ack never comes
        _, error = await next_of(outcomes)
        assert error is None  # the handler was done once its answer was written
        assert front.answers_pending == 1
        first.drop()
        second = await peer.next_connection()
        await front.wait_ready(WAIT_S)
        assert second is not first
        assert [message.fields[1] for message in second.log[:3]] == ["authenticate", "route", "route"]
        assert second.routes == ["register", "options"]
        assert front.stats.reconnects == 1
        assert (front.stats.links_lost, front.stats.answers_unconfirmed, front.stats.requests_cut_off) == (1, 1, 0)
        [lost] = [record for record in caplog.records if "link lost" in record.getMessage()]
        assert "requests_cut_off=0 answers_unconfirmed=1" in lost.getMessage()
        # the new link serves requests again
        await second.send(network_request("t-after", OPTIONS_SIP, proto="tcp"))
        answer = await next_of(second.inbox)
        assert answer.fields[1:] == ["sip", "t-after", ""]
        await second.reply(answer.msg_id, "OK")
        request, error = await next_of(outcomes)
        assert error is None and request.facts.transport == "tcp"


async def test_connects_once_the_server_comes_up() -> None:
    server = DrachtioPeer()
    await server.start()
    port = server.port
    await server.close()
    front = make_front(port)
    async with front:
        await until(lambda: front.stats.reconnects >= 2)
        assert not front.ready
        with pytest.raises(DrachtioConnectionError):
            await front.send_request(OutboundRequest("OPTIONS", "sip:203.0.113.10"), timeout_s=1)


# -- incoming requests (sections 5, 6, 14.3-14.5, 14.9) --------------------------------------------


async def test_register_is_delivered_and_the_401_frame_is_the_docs(peer: DrachtioPeer) -> None:
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    front = make_front(peer.port)
    challenge = 'Digest realm="example.com", nonce="5f2a9c1e7b3d", algorithm=MD5, qop="auth"'
    front.set_handler(answering(outcomes, 401, "Unauthorized", [("WWW-Authenticate", challenge)]))
    async with running(front, peer) as connection:
        await connection.send(REGISTER_FRAME)
        answer = await next_of(connection.inbox)
        assert answer.frame == with_id(APP_401_FRAME, APP_401_ID, answer.msg_id)
        request, error = await next_of(outcomes)  # respond() is done once the frame is written
        assert error is None
        assert front.answers_pending == 1
        await connection.send(with_id(ACK_401_FRAME, APP_401_ID, answer.msg_id))
        await until(lambda: front.answers_pending == 0)
        assert front.stats.answers_refused == 0
        assert request.message.method == "REGISTER"
        assert request.message.call_id == "1j9FpLxk3uxtm8tn@192.0.2.44"
        assert request.facts == TransportFacts(
            source_ip="192.0.2.44",
            source_port=5062,
            transport="udp",
            sbc_address=HOSTPORTS,
            private_sbc_address="172.16.3.3:5070",
        )


async def test_register_with_credentials_gets_the_docs_200(peer: DrachtioPeer) -> None:
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    front = make_front(peer.port)
    headers = [
        ("Contact", "<sip:alice@192.0.2.44:5062;transport=udp>;expires=3600"),
        ("Date", "Thu, 26 Nov 2026 14:03:27 GMT"),
    ]
    front.set_handler(answering(outcomes, 200, "OK", headers))
    async with running(front, peer) as connection:
        await connection.send(network_request(REGISTER2_TXN, REGISTER2_SIP))
        answer = await next_of(connection.inbox)
        assert answer.frame == with_id(APP_200_FRAME, APP_200_ID, answer.msg_id)
        await connection.reply(answer.msg_id, "OK", "application", "356", "udp", "192.0.2.44", "5062")
        _, error = await next_of(outcomes)
        assert error is None


async def test_options_answer_copies_the_dialog_headers_and_nothing_else(peer: DrachtioPeer) -> None:
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    front = make_front(peer.port)
    front.set_handler(answering(outcomes, 200, "OK", [("X-Members", "3"), ("Via", "SIP/2.0/UDP evil")]))
    async with running(front, peer) as connection:
        await connection.send(network_request("t-opt", OPTIONS_SIP, proto="tcp", src="10.0.0.21", port=40412))
        answer = await next_of(connection.inbox)
        assert answer.fields[1:] == ["sip", "t-opt", ""]
        assert answer.sip == crlf(
            "SIP/2.0 200 OK\n"
            "Call-ID: opt-1@10.0.0.21\n"
            "CSeq: 7 OPTIONS\n"
            "From: <sip:fs@10.0.0.21>;tag=fs1\n"
            "To: <sip:198.51.100.7:5060>\n"
            "X-Members: 3\n"
            "Content-Length: 0\n"
            "\n"
        )
        await connection.reply(answer.msg_id, "OK")
        request, error = await next_of(outcomes)
        assert error is None
        assert request.facts.transport == "tcp" and request.facts.source_port == 40412
        assert request.message.headers.get("X-FS-Status") == "open"


async def test_refused_answer_is_counted_with_drachtios_reason(
    peer: DrachtioPeer, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    front = make_front(peer.port)
    front.set_handler(answering(outcomes, 200, "OK"))
    async with running(front, peer) as connection:
        await connection.send(network_request(REGISTER2_TXN, REGISTER2_SIP))
        answer = await next_of(connection.inbox)
        _, error = await next_of(outcomes)
        assert error is None
        await connection.send(with_id(NOK_FRAME, APP_200_ID, answer.msg_id))  # 14.9
        await until(lambda: front.stats.answers_refused == 1)
        assert front.answers_pending == 0 and front.ready
    [refusal] = [record for record in caplog.records if "refused an answer" in record.getMessage()]
    assert f"txn={REGISTER2_TXN} status=NOK reason='{UNKNOWN_TRANSACTION}'" in refusal.getMessage()


async def test_unconfirmed_answer_is_counted_after_the_request_timeout(peer: DrachtioPeer) -> None:
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    front = make_front(peer.port, request_timeout_s=0.2)
    front.set_handler(answering(outcomes, 200, "OK"))
    async with running(front, peer) as connection:
        await connection.send(network_request("t-1", OPTIONS_SIP))
        await next_of(connection.inbox)
        await asyncio.sleep(0.25)
        assert front.stats.answers_unconfirmed == 0  # looked at when the next answer is written
        await connection.send(network_request("t-2", OPTIONS_SIP))
        second = await next_of(connection.inbox)
        assert front.stats.answers_unconfirmed == 1 and front.answers_pending == 1
        await connection.reply(second.msg_id, "OK")
        await until(lambda: front.answers_pending == 0)
        assert front.stats.answers_unconfirmed == 1


async def test_unparseable_request_is_counted_and_answered_400(peer: DrachtioPeer) -> None:
    seen: list[IncomingRequest] = []

    async def handler(request: IncomingRequest) -> None:
        seen.append(request)

    peer.ack_answers = True
    front = make_front(peer.port)
    front.set_handler(handler)
    garbage = crlf("REGISTER sip:198.51.100.7 SIP/2.0\nCall-ID: broken-1\nthis is not a header\n\n")
    async with running(front, peer) as connection:
        await connection.send(network_request("t-bad", garbage))
        answer = await next_of(connection.inbox)
        assert answer.fields[1:] == ["sip", "t-bad", ""]
        assert answer.sip == crlf("SIP/2.0 400 Bad Request\nCall-ID: broken-1\nContent-Length: 0\n\n")
        assert front.stats.dropped_unparseable == 1
        assert seen == []
        await connection.reply(answer.msg_id, "OK")  # an ack nobody waits for is ignored
        await connection.send(network_request("t-good", OPTIONS_SIP))
        await until(lambda: len(seen) == 1)


NOT_UTF8_REGISTER = REGISTER2_SIP.replace(b'username="alice"', b'username="al\xffce"')


@pytest.mark.parametrize(
    ("sip", "reason"),
    [
        (NOT_UTF8_REGISTER, "Message is not valid UTF-8"),
        (
            REGISTER2_SIP.replace(b"CSeq: 2 REGISTER", b"CSeq: 2 OPTIONS"),
            "CSeq method does not match the request method",
        ),
        (REGISTER2_SIP.replace(b"CSeq: 2 REGISTER", b"CSeq: two REGISTER"), "Invalid CSeq header"),
        (REGISTER2_SIP.replace(b"To: <sip:alice@example.com>\r\n", b""), "Missing to header"),
    ],
    ids=["digest-not-utf8", "cseq-method", "cseq-number", "no-to"],
)
async def test_what_the_native_front_refuses_is_answered_400(peer: DrachtioPeer, sip: bytes, reason: str) -> None:
    seen: list[IncomingRequest] = []

    async def handler(request: IncomingRequest) -> None:
        seen.append(request)
        await request.respond(200, "OK")

    peer.ack_answers = True
    front = make_front(peer.port)
    front.set_handler(handler)
    async with running(front, peer) as connection:
        await connection.send(connection.deliver(REGISTER2_TXN, sip))
        answer = await next_of(connection.inbox)
        assert answer.fields[1:] == ["sip", REGISTER2_TXN, ""] and answer.sip is not None
        assert answer.sip.startswith(b"SIP/2.0 400 Bad Request\r\nCall-ID: 1j9FpLxk3uxtm8tn@192.0.2.44\r\n")
        assert f"\r\nX-Reason: {reason}\r\n".encode() in answer.sip
        await until(lambda: front.answers_pending == 0)
        assert seen == [] and front.stats.bad_requests == 1 and front.stats.answers_refused == 0
        # the link and the next request are fine
        await connection.send(connection.deliver("t-next", REGISTER2_SIP))
        answer = await next_of(connection.inbox)
        assert answer.fields[2] == "t-next" and answer.sip is not None and answer.sip.startswith(b"SIP/2.0 200 OK")
        assert len(seen) == 1


async def test_a_keepalive_the_handler_answers_in_place_takes_no_task(peer: DrachtioPeer) -> None:
    class Ingestish:
        """What ingest's handler offers: `answer_now` answers what needs no decision, through `respond_now`."""

        calls = 0

        def answer_now(self, request: IncomingRequest) -> bool:
            if request.message.headers.get("X-FS-Status") is not None:
                return False
            assert isinstance(request, DrachtioRequest)
            request.respond_now(200, "OK")
            return True

        async def __call__(self, request: IncomingRequest) -> None:
            self.calls += 1
            await request.respond(200, "OK", [("X-Members", "1")])

    handler = Ingestish()
    peer.ack_answers = True
    front = make_front(peer.port)
    front.set_handler(handler)
    plain = OPTIONS_SIP.replace(b"X-FS-Status: open\r\n", b"")
    async with running(front, peer) as connection:
        tasks_before = len(asyncio.all_tasks())
        await connection.send(connection.deliver("t-plain", plain))
        answer = await next_of(connection.inbox)
        assert answer.fields[2] == "t-plain" and answer.sip is not None
        assert answer.sip.startswith(b"SIP/2.0 200 OK\r\n") and b"X-Members" not in answer.sip
        assert handler.calls == 0 and len(asyncio.all_tasks()) == tasks_before
        await connection.send(connection.deliver("t-heartbeat", OPTIONS_SIP))
        answer = await next_of(connection.inbox)
        assert answer.sip is not None and b"X-Members: 1\r\n" in answer.sip and handler.calls == 1
        await until(lambda: front.answers_pending == 0)


async def test_handler_failure_and_silence_are_answered_500(peer: DrachtioPeer) -> None:
    async def handler(request: IncomingRequest) -> None:
        if request.message.headers.get("Call-ID") == "opt-1@10.0.0.21":
            raise RuntimeError("boom")

    peer.ack_answers = True
    front = make_front(peer.port)
    front.set_handler(handler)
    async with running(front, peer) as connection:
        await connection.send(network_request("t-raise", OPTIONS_SIP))
        answer = await next_of(connection.inbox)
        assert answer.fields[2] == "t-raise" and answer.sip is not None
        assert answer.sip.startswith(b"SIP/2.0 500 Server Internal Error\r\n")
        await connection.reply(answer.msg_id, "OK")
        await connection.send(REGISTER_FRAME)
        answer = await next_of(connection.inbox)
        assert answer.fields[2] == REGISTER_TXN and answer.sip is not None
        assert answer.sip.startswith(b"SIP/2.0 500 ")


async def test_oversized_response_is_refused_before_it_reaches_the_server(peer: DrachtioPeer) -> None:
    errors: list[BaseException] = []

    async def handler(request: IncomingRequest) -> None:
        try:
            await request.respond(200, "OK", [("Content-Type", "text/plain")], b"x" * 13_000)
        except FrameTooLargeError as exc:
            errors.append(exc)
        await request.respond(500, "Server Internal Error")

    front = make_front(peer.port)
    front.set_handler(handler)
    async with running(front, peer) as connection:
        await connection.send(network_request("t-big", OPTIONS_SIP))
        answer = await next_of(connection.inbox)
        await connection.reply(answer.msg_id, "OK")
        assert answer.sip is not None and answer.sip.startswith(b"SIP/2.0 500 ")
        assert len(errors) == 1 and "12,228" in str(errors[0])
        assert all(len(message.frame) < 12_000 for message in connection.log)


async def test_split_and_joined_frames_from_the_server(peer: DrachtioPeer) -> None:
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    peer.ack_answers = True
    front = make_front(peer.port)
    front.set_handler(answering(outcomes, 200, "OK"))
    async with running(front, peer) as connection:
        for piece in (REGISTER_FRAME[:2], REGISTER_FRAME[2:100], REGISTER_FRAME[100:]):  # "51" | "7#..."
            await connection.send(piece)
            await asyncio.sleep(0.02)
        joined = network_request("t-a", OPTIONS_SIP) + network_request("t-b", OPTIONS_SIP)
        await connection.send(joined)
        answered = {(await next_of(connection.inbox)).fields[2] for _ in range(3)}
        assert answered == {REGISTER_TXN, "t-a", "t-b"}


async def test_unknown_and_unsolicited_sip_messages_are_ignored(peer: DrachtioPeer) -> None:
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    peer.ack_answers = True
    front = make_front(peer.port)
    front.set_handler(answering(outcomes, 200, "OK"))
    async with running(front, peer) as connection:
        await connection.send(network_response("no-such-transaction", crlf("SIP/2.0 200 OK\nCSeq: 1 OPTIONS\n\n")))
        bye = crlf("BYE sip:a@192.0.2.1 SIP/2.0\nCall-ID: x\nCSeq: 2 BYE\n\n")
        meta = f"sip|application|{len(bye)}|udp|198.51.100.7|5060|14:00:00.000000"
        unsolicited = f"{uuid.uuid4()}|{meta}|unsolicited|x;from-tag=1|"
        await connection.send(frame(unsolicited.encode() + b"\r\n" + bye))
        await connection.send(frame(f"{uuid.uuid4()}|cdr:stop|application|06:57:01.450437|call-rejected".encode()))
        await connection.send(network_request("t-ok", OPTIONS_SIP))
        answer = await next_of(connection.inbox)
        assert answer.fields[2] == "t-ok"
        assert front.ready and len(peer.connections) == 1


# -- outgoing requests (section 7, 14.6-14.8) ---------------------------------------------------------


async def test_send_request_register_challenge_and_retry(peer: DrachtioPeer) -> None:
    front = make_front(peer.port)
    first = OutboundRequest(
        "REGISTER",
        "sip:sip.carrier.example",
        headers=[
            ("From", "<sip:4415550100@sip.carrier.example>"),
            ("To", "<sip:4415550100@sip.carrier.example>"),
            ("Contact", "<sip:4415550100@localhost>"),
            ("Expires", "600"),
        ],
    )
    async with running(front, peer) as connection:
        sending = asyncio.ensure_future(front.send_request(first, timeout_s=WAIT_S))
        sent = await next_of(connection.inbox)
        assert sent.frame == with_id(APP_REGISTER_FRAME, APP_REGISTER_ID, sent.msg_id)  # 14.6
        # the ack, then the carrier's 401 in the same TCP segment
        await connection.send(with_id(ACK_REGISTER_FRAME, APP_REGISTER_ID, sent.msg_id) + CHALLENGE_FRAME)
        challenge = await sending
        assert isinstance(challenge, SipResponse)
        assert challenge.status == 401
        assert challenge.headers.get("WWW-Authenticate") == (
            'Digest realm="carrier.example", nonce="7d9e1f", algorithm=MD5, qop="auth"'
        )

        retry = OutboundRequest(
            "REGISTER",
            "sip:sip.carrier.example",
            headers=[
                ("From", "<sip:4415550100@sip.carrier.example>;tag=Q9rS0tU1vW2xY"),
                ("To", "<sip:4415550100@sip.carrier.example>"),
                ("Call-ID", "5c8a1e22-6409-1240-81b7-6a2d58cd4660"),
                ("CSeq", "104730 REGISTER"),
                ("Contact", "<sip:4415550100@localhost>"),
                ("Expires", "600"),
                ("Authorization", AUTHORIZATION),
            ],
            next_hop="sip:203.0.113.10:5060",
        )
        sending = asyncio.ensure_future(front.send_request(retry, timeout_s=WAIT_S))
        sent = await next_of(connection.inbox)
        # section 7: `sip|<txn>|<dialog>|<proxy>`, as drachtio-srf writes it
        assert sent.fields == [sent.msg_id, "sip", "", "", "sip:203.0.113.10:5060"]
        assert sent.sip == RETRY_SIP
        meta = ("application", "0", "udp", "198.51.100.7", "5060", "14:05:10.050000")
        await connection.reply(sent.msg_id, "OK", *meta, RETRY_TXN, "Msg sent:")
        await connection.send(network_response(RETRY_TXN, crlf("SIP/2.0 180 Ringing\nCSeq: 104730 REGISTER\n\n")))
        await asyncio.sleep(0.05)
        assert not sending.done()  # provisional responses are skipped
        await connection.send(CARRIER_200_FRAME)
        accepted = await sending
        assert accepted.status == 200
        assert accepted.headers.get("Contact") == "<sip:4415550100@198.51.100.7:5060>;expires=600"


async def test_send_request_without_a_final_response_gives_408(peer: DrachtioPeer) -> None:
    front = make_front(peer.port)
    options = OutboundRequest("OPTIONS", "sip:203.0.113.10:5060", headers=[("Call-ID", "ping-1")])
    async with running(front, peer) as connection:
        sending = asyncio.ensure_future(front.send_request(options, timeout_s=0.3))
        sent = await next_of(connection.inbox)
        assert sent.fields == [sent.msg_id, "sip", "", ""]
        assert sent.sip == crlf("OPTIONS sip:203.0.113.10:5060 SIP/2.0\nCall-ID: ping-1\nContent-Length: 0\n\n")
        await connection.reply(sent.msg_id, "OK", "application", "0", "udp", "a", "1", "t", "txn-408", "Msg sent:")
        response = await sending
        assert (response.status, response.reason) == (408, "Request Timeout")
        assert response.call_id == "ping-1"


async def test_stack_made_503_is_a_final_response(peer: DrachtioPeer) -> None:
    front = make_front(peer.port)
    async with running(front, peer) as connection:
        sending = asyncio.ensure_future(front.send_request(OutboundRequest("OPTIONS", "sip:192.0.2.99"), 2))
        sent = await next_of(connection.inbox)
        await connection.reply(sent.msg_id, "OK", "application", "0", "udp", "a", "1", "t", "txn-503", "Msg sent:")
        # section 7: made up by the stack, bytes 0, empty address, port 0
        stack_503 = crlf("SIP/2.0 503 Service Unavailable\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n")
        leader = f"{uuid.uuid4()}|sip|network|0|||0|14:05:11.000000|txn-503||"
        await connection.send(frame(leader.encode() + b"\r\n" + stack_503))
        assert (await sending).status == 503


async def test_send_request_refused_by_drachtio_raises(peer: DrachtioPeer) -> None:
    front = make_front(peer.port)
    async with running(front, peer) as connection:
        sending = asyncio.ensure_future(front.send_request(OutboundRequest("OPTIONS", "sip:x.invalid"), 2))
        sent = await next_of(connection.inbox)
        await connection.reply(sent.msg_id, "NOK", "requested protocol/transport not available")
        with pytest.raises(DrachtioCommandError, match="requested protocol/transport not available"):
            await sending


async def test_send_request_fails_when_the_link_drops(peer: DrachtioPeer) -> None:
    front = make_front(peer.port)
    async with running(front, peer) as connection:
        sending = asyncio.ensure_future(front.send_request(OutboundRequest("OPTIONS", "sip:192.0.2.99"), 5))
        sent = await next_of(connection.inbox)
        await connection.reply(sent.msg_id, "OK", "application", "0", "udp", "a", "1", "t", "txn-lost", "Msg sent:")
        await asyncio.sleep(0.02)
        connection.drop()
        with pytest.raises(DrachtioConnectionError):
            await sending


# -- keep-alive and lifecycle -------------------------------------------------------------------------


async def test_pings_keep_the_link_and_a_missing_pong_drops_it(peer: DrachtioPeer) -> None:
    front = make_front(peer.port, ping_interval_s=0.05)
    async with running(front, peer) as connection:
        await until(lambda: connection.pings >= 3)
        ping = next(message for message in connection.log if message.fields[1] == "ping")
        assert re.fullmatch(rf"41#{UUID}\|ping", ping.frame.decode())  # 14.2
        assert len(peer.connections) == 1
        peer.answer_pings = False
        await peer.next_connection()
        assert front.stats.reconnects == 1
        await front.wait_ready(WAIT_S)


async def test_no_pings_to_servers_older_than_0_8_2() -> None:
    server = DrachtioPeer(version="v0.8.1")
    await server.start()
    try:
        async with running(make_front(server.port, ping_interval_s=0.02), server) as connection:
            await asyncio.sleep(0.15)
            assert connection.pings == 0
    finally:
        await server.close()


async def test_close_is_idempotent_and_the_front_is_single_use(peer: DrachtioPeer) -> None:
    front = make_front(peer.port)
    async with running(front, peer):
        pass
    await front.aclose()
    await front.aclose()
    assert not front.ready
    with pytest.raises(RuntimeError):
        await front.__aenter__()
    await until(lambda: peer.connections[0].writer.is_closing() or peer.connections[0].reader.at_eof())


async def test_close_lets_a_handler_in_flight_finish(peer: DrachtioPeer) -> None:
    release = asyncio.Event()
    finished: list[str] = []

    async def handler(request: IncomingRequest) -> None:
        await release.wait()
        await request.respond(200, "OK")
        finished.append(request.message.method)

    front = make_front(peer.port)
    front.set_handler(handler)
    async with running(front, peer) as connection:
        await connection.send(network_request("t-slow", OPTIONS_SIP))
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(front.aclose())
        await asyncio.sleep(0.05)
        await connection.send(network_request("t-late", OPTIONS_SIP))
        late = await next_of(connection.inbox)
        assert late.fields[2] == "t-late" and late.sip is not None and late.sip.startswith(b"SIP/2.0 503 ")
        release.set()
        answer = await next_of(connection.inbox)
        assert answer.fields[2] == "t-slow"
        await connection.reply(answer.msg_id, "OK")
        await closing
    assert finished == ["OPTIONS"]
