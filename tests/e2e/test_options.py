"""OPTIONS end to end over the native front, driven by sipp (SPEC 3)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.e2e.conftest import Sidecar, run_sipp, udp_exchange


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_keepalive_options_get_200(sidecar: Sidecar, transport: str) -> None:
    port = sidecar.udp_port if transport == "u1" else sidecar.tcp_port
    result = await run_sipp("options.xml", port, transport=transport, calls=20, rate=50)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SIP/2.0 200 OK" in result.messages
    assert "X-Members" not in result.messages


async def test_keepalive_options_make_no_events(sidecar: Sidecar, redis) -> None:
    request = (
        b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.8.7:5999;branch=z9hG4bKka1;rport\r\n"
        b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: ka-1\r\nCSeq: 1 OPTIONS\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    answer = await udp_exchange(sidecar.udp_port, request)
    assert answer.startswith(b"SIP/2.0 200 OK\r\n")
    # RFC 3581: the answer's Via names the packet's real source address and port
    assert b"Via: SIP/2.0/UDP 10.9.8.7:5999;branch=z9hG4bKka1;rport=" in answer
    assert b";received=127.0.0.1" in answer
    assert await redis.xlen(sidecar.names.requests) == 0


async def test_the_reply_stream_expires_and_is_removed_at_stop(cluster_id: str, mysql_db: str, redis) -> None:
    from tests.e2e.conftest import start_sidecar, stop_sidecar

    sidecar = await start_sidecar(cluster_id, mysql_db)
    stream = sidecar.names.replies(sidecar.settings.ingest_id)
    try:
        await redis.xadd(stream, {"type": "x", "v": "1", "data": "{}"})  # as a processor's reply would
        for _ in range(60):
            if await redis.ttl(stream) > 0:
                break
            await asyncio.sleep(0.05)
        assert 0 < await redis.ttl(stream) <= 3600
    finally:
        await stop_sidecar(sidecar)
    assert not await redis.exists(stream)


def _exchange_twice(port: int, first: bytes, second: bytes) -> tuple[bytes, bytes]:
    """Both requests from one socket (one source port), as a phone's retransmission would come."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        answers = []
        for payload in (first, second):
            sock.sendto(payload, ("127.0.0.1", port))
            answers.append(sock.recv(65536))
    return answers[0], answers[1]


async def test_keepalive_options_are_answered_statelessly_with_a_stable_to_tag(sidecar: Sidecar) -> None:
    """RFC 3261 8.2.7: no transaction is kept for an in-place answer, yet a retransmission gets the same
    answer, To tag included; another request gets another tag."""

    def options(call_id: str) -> bytes:
        return (
            f"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{call_id};rport\r\n"
            f"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    first, retransmitted = await asyncio.to_thread(_exchange_twice, sidecar.udp_port, options("st-1"), options("st-1"))
    assert first.startswith(b"SIP/2.0 200 OK\r\n") and retransmitted == first
    _, other = await asyncio.to_thread(_exchange_twice, sidecar.udp_port, options("st-2"), options("st-2"))

    def to_tag(answer: bytes) -> bytes:
        to_line = next(line for line in answer.split(b"\r\n") if line.startswith(b"To:"))
        return to_line.partition(b";tag=")[2]

    assert len(to_tag(first)) == 10 and to_tag(other) != to_tag(first)
    async with aiohttp.ClientSession() as session, session.get(sidecar.health_url.replace("health", "metrics")) as r:
        metrics = await r.text()
    assert "sbc_sidecar_ingest_sip_responses_repeated 0" in metrics  # answered again, not replayed from a table
