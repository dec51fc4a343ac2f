"""The native front's per-source limits over real loopback sockets: dribbling stream clients are cut off at the
message deadline, connections beyond a source's bound are refused, and a flooding source is dropped past its
per-second limit, while trusted sources are exempt."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from ingest.fronts.front import IncomingRequest
from ingest.fronts.native import NativeFront
from ingest.fronts.native.front import SipAbuseLimits
from runtime.settings import SipListen

LIMITED_IP = "127.0.0.2"  # any 127/8 address is this host; only 127.0.0.1 is trusted below
TRUSTED = ("127.0.0.1/32",)


def options(n: int, transport: str = "TCP") -> bytes:
    return (
        f"OPTIONS sip:sbc@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:5099;branch=z9hG4bK-limits-{n}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:probe@127.0.0.1>;tag=limits\r\n"
        "To: <sip:sbc@127.0.0.1>\r\n"
        f"Call-ID: limits-{n}@127.0.0.1\r\n"
        f"CSeq: {n} OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Answering:
    """A handler that answers every request 200 at once."""

    async def __call__(self, request: IncomingRequest) -> None:
        await request.respond(200, "OK")


@pytest.fixture
async def front() -> AsyncIterator[NativeFront]:
    abuse = SipAbuseLimits(
        trusted_sources=TRUSTED, flood_max_per_s=20, message_deadline_s=1.0, max_connections_per_ip=5
    )
    listen = [SipListen("tcp", "127.0.0.1", 0), SipListen("udp", "127.0.0.1", 0)]
    native = NativeFront(listen, idle_timeout_s=600.0, abuse=abuse)
    native.set_handler(Answering())
    async with native:
        yield native


async def connect(front: NativeFront, source_ip: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = front.bound("tcp")
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source_ip, 0))


async def closed_after_s(reader: asyncio.StreamReader, started: float, limit_s: float) -> float | None:
    """Seconds from `started` until the server closed the connection; None if still open after `limit_s`."""
    try:
        async with asyncio.timeout(limit_s):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


async def dribble(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    try:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every_s)
    except (ConnectionError, OSError):
        return


async def test_dribbling_clients_are_closed_at_the_message_deadline(front: NativeFront) -> None:
    # Trusted sources too: the deadline is for everyone. One byte every 100 ms keeps the idle timer (600 s) fresh.
    clients = [await connect(front, "127.0.0.1") for _ in range(40)]
    started = time.monotonic()
    tasks = [asyncio.create_task(dribble(writer, options(i), 0.1)) for i, (_, writer) in enumerate(clients)]
    try:
        closed = await asyncio.gather(*(closed_after_s(reader, started, 5.0) for reader, _ in clients))
    finally:
        for task in tasks:
            task.cancel()
        for _, writer in clients:
            writer.close()
    assert all(after is not None and 0.9 <= after <= 2.0 for after in closed), closed
    assert front.stats.connections_timed_out == 40


async def test_messages_in_pieces_within_the_deadline_and_pauses_between_messages_are_fine(
    front: NativeFront,
) -> None:
    reader, writer = await connect(front, LIMITED_IP)
    try:
        message = options(1)
        writer.write(message[:30])
        await asyncio.sleep(0.5)
        writer.write(message[30:])
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)).startswith(b"SIP/2.0 200 OK")
        writer.write(b"\r\n")  # a single-CRLF keep-alive begins no message
        await asyncio.sleep(1.5)  # longer than the deadline, with nothing begun
        writer.write(options(2))
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)).startswith(b"SIP/2.0 200 OK")
    finally:
        writer.close()
    assert front.stats.connections_timed_out == 0


async def test_connections_beyond_a_sources_bound_are_refused(front: NativeFront) -> None:
    limited = [await connect(front, LIMITED_IP) for _ in range(8)]
    trusted = [await connect(front, "127.0.0.1") for _ in range(8)]
    started = time.monotonic()
    try:
        closed = await asyncio.gather(*(closed_after_s(reader, started, 0.5) for reader, _ in limited + trusted))
        assert [after is None for after in closed] == [True] * 5 + [False] * 3 + [True] * 8
        assert front.stats.connections_refused == 3
        limited[0][1].close()  # one of the five goes: a new one from that source is accepted
        await asyncio.sleep(0.2)
        reader, writer = await connect(front, LIMITED_IP)
        limited.append((reader, writer))
        writer.write(options(9))
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)).startswith(b"SIP/2.0 200 OK")
    finally:
        for _, writer in limited + trusted:
            writer.close()


async def udp_burst(front: NativeFront, source_ip: str, count: int) -> int:
    """Sends `count` OPTIONS at once from `source_ip`; how many were answered."""
    _, port = front.bound("udp")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source_ip, 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        for i in range(count):
            sock.sendto(options(i, "UDP"), ("127.0.0.1", port))
        answered = 0
        while True:
            try:
                async with asyncio.timeout(0.5):
                    await loop.sock_recv(sock, 65536)
            except TimeoutError:
                return answered
            answered += 1
    finally:
        sock.close()


async def test_a_flooding_source_is_dropped_past_its_limit_and_trusted_ones_are_not(front: NativeFront) -> None:
    answered = await udp_burst(front, LIMITED_IP, 100)
    assert 20 <= answered <= 40  # 20 a second: the burst may straddle a second's turn
    assert front.stats.flood_dropped == 100 - answered
    assert await udp_burst(front, "127.0.0.1", 100) == 100
