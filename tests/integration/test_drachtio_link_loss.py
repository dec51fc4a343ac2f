"""The drachtio front under stress, against the protocol peer of test_drachtio_front.py.

A frame cut short by drachtio in the middle of a burst (the server writes each message with its own
`async_write` and no queue, and was seen to do this at 8,000 OPTIONS/s): the front keeps what came
intact before it, drops the link with one log line, is routed again within 100 ms, answers the
requests it had taken on the new link, and serves the ones that come after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from ingest.fronts.front import IncomingRequest
from tests.integration.test_drachtio_front import (
    UNKNOWN_TRANSACTION,
    AppMessage,
    DrachtioPeer,
    PeerConnection,
    crlf,
    make_front,
    network_request,
    running,
    until,
)

BURST = 5_000
CUT_AT = 2_500  # the truncated frame comes after this many whole ones
HELD_BACK = 100  # the last requests before it: their handler answers only once the new link is ready
AFTER = 500  # requests delivered on the new link
CHUNK = 250  # frames per write of the burst
TRUNCATED_AFTER_BYTES = 11  # as seen from drachtio-server under load
BURST_WAIT_S = 30.0


def heartbeat(n: int) -> bytes:
    """A feature server's OPTIONS heartbeat (it needs a decision, so it is not answered in place)."""
    return crlf(
        "OPTIONS sip:198.51.100.7:5060 SIP/2.0\n"
        f"Via: SIP/2.0/UDP 10.0.0.21:5060;branch=z9hG4bK-b{n:05d};rport=5060\n"
        "Max-Forwards: 70\n"
        "From: <sip:fs@10.0.0.21>;tag=fs1\n"
        "To: <sip:198.51.100.7:5060>\n"
        f"Call-ID: burst-{n:05d}\n"
        f"CSeq: {n + 1} OPTIONS\n"
        "X-FS-Status: open\n"
        "Content-Length: 0\n"
        "\n"
    )


def txn(n: int) -> str:
    return f"txn-{n:05d}"


def answers(connection: PeerConnection) -> list[AppMessage]:
    return [m for m in connection.log if m.fields[1] == "sip" and m.sip is not None and m.sip.startswith(b"SIP/2.0 ")]


async def write_burst(connection: PeerConnection) -> float:
    """Deliver the burst in writes of CHUNK frames; returns when the truncated frame was written."""
    frames = [connection.deliver(txn(n), heartbeat(n)) for n in range(BURST)]
    cut = network_request("txn-trunc", heartbeat(BURST))[:TRUNCATED_AFTER_BYTES]
    frames.insert(CUT_AT, cut)
    corrupted_at = 0.0
    with contextlib.suppress(ConnectionError):
        for start in range(0, len(frames), CHUNK):
            chunk = frames[start : start + CHUNK]
            if cut in chunk:
                corrupted_at = time.time()
            connection.writer.write(b"".join(chunk))
            await connection.writer.drain()
    assert corrupted_at
    return corrupted_at


@pytest.mark.parametrize("outlive", [False, True], ids=["section-12-old-ids-refused", "server-code-ids-held"])
async def test_truncated_frame_in_a_burst_costs_one_line_and_milliseconds(
    outlive: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ingest.fronts.drachtio")
    peer = DrachtioPeer()
    peer.ack_answers = True
    peer.transactions_outlive_links = outlive
    await peer.start()
    new_link_ready = asyncio.Event()
    handled: list[str] = []

    async def handler(request: IncomingRequest) -> None:
        n = int((request.message.call_id or "").removeprefix("burst-"))
        if CUT_AT - HELD_BACK <= n < CUT_AT:
            await new_link_ready.wait()
        await request.respond(200, "OK", [("X-Members", "1")])
        handled.append(txn(n))

    front = make_front(peer.port, request_timeout_s=BURST_WAIT_S)
    front.set_handler(handler)
    try:
        async with running(front, peer) as first:
            corrupted_at = await write_burst(first)
            second = await peer.next_connection()
            await front.wait_ready(BURST_WAIT_S)
            new_link_ready.set()
            for n in range(BURST + 1, BURST + 1 + AFTER):
                await second.send(second.deliver(txn(n), heartbeat(n)))
            stats = front.stats
            async with asyncio.timeout(BURST_WAIT_S):
                await until_answered(handled, second, stats.answers_relinked + AFTER)
            await until(lambda: front.answers_pending == 0)
    finally:
        await peer.close()

    intact = {txn(n) for n in range(CUT_AT)}
    after = {txn(n) for n in range(BURST + 1, BURST + 1 + AFTER)}
    # each request that came whole before the cut, and each after the reconnect, is answered once;
    # nothing past the cut was read (those frames lost their boundaries)
    assert sorted(handled) == sorted(intact | after)
    old = [m.fields[2] for m in answers(first)]
    on_second = [m.fields[2] for m in answers(second)]
    late = set(on_second) & intact
    assert len(set(old)) == len(old) and len(set(on_second)) == len(on_second)
    assert set(old) <= intact - late and set(on_second) - late == after
    # answers written on the old link are either read by drachtio there or counted unconfirmed (the peer,
    # like the server, stops reading when its write to the app fails); those cut off went on the new one
    assert len(intact - late - set(old)) <= stats.answers_unconfirmed <= len(intact - late)
    assert (stats.links_lost, stats.streams_corrupt, stats.reconnects) == (1, 1, 1)
    assert stats.requests_cut_off >= HELD_BACK
    assert stats.answers_relinked == len(late) == stats.requests_cut_off and stats.answers_lost == 0
    assert stats.answers_refused == (0 if outlive else len(late))

    records = [r for r in caplog.records if r.name.startswith("ingest.fronts.drachtio")]
    assert not [r for r in records if r.exc_info]
    [lost] = [r for r in records if "link lost" in r.getMessage()]
    assert f"requests_cut_off={stats.requests_cut_off} " in lost.getMessage()
    assert "bad drachtio length prefix" in lost.getMessage() and "corrupt_frame_discarded=True" in lost.getMessage()
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    refusal = [] if outlive else [m for m in warnings if "refused an answer" in m and UNKNOWN_TRANSACTION in m]
    assert warnings == [lost.getMessage(), *refusal]
    ready = [r for r in records if r.getMessage().startswith("drachtio ready")][-1]

    first_attempt_s = second.accepted_at - lost.created
    reconnect_s = ready.created - lost.created
    print(
        f"\ncorrupt frame written -> link lost {lost.created - corrupted_at:.4f} s, "
        f"-> reconnect attempt {first_attempt_s:.4f} s, -> drachtio ready {reconnect_s:.4f} s "
        f"(corrupt frame written -> drachtio ready {ready.created - corrupted_at:.4f} s); "
        f"cut off {stats.requests_cut_off}, unconfirmed {stats.answers_unconfirmed}, "
        f"relinked {stats.answers_relinked}, refused {stats.answers_refused}"
    )
    for record in records:
        print(f"{record.levelname} {record.name}: {record.getMessage()}")
    assert first_attempt_s < 0.05
    assert reconnect_s < 0.1


async def until_answered(handled: list[str], second: PeerConnection, on_second: int) -> None:
    while len(handled) < CUT_AT + AFTER or len(answers(second)) < on_second:  # noqa: ASYNC110 - the peer's record
        await asyncio.sleep(0.01)


async def test_a_link_that_served_is_replaced_at_once_one_that_drops_when_ready_waits() -> None:
    peer = DrachtioPeer()
    await peer.start()
    front = make_front(peer.port, reconnect_initial_s=0.3, reconnect_max_s=1.0)
    try:
        async with running(front, peer) as first:
            await asyncio.sleep(0.35)
            dropped_at = time.time()
            first.drop()
            second = await peer.next_connection()
            assert second.accepted_at - dropped_at < 0.1  # not after the 0.3 s backoff
            await front.wait_ready(1.0)
            second.drop()  # as soon as it is ready: the server may be refusing us in a loop
            dropped_at = time.time()
            third = await peer.next_connection()
            assert third.accepted_at - dropped_at >= 0.3
            await front.wait_ready(1.0)
            assert front.stats.links_lost == 2 and front.stats.reconnects == 2
    finally:
        await peer.close()
