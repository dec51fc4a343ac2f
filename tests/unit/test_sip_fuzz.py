"""A fuzz target for the SIP edge, run for a bounded time: mutated real messages through the native front's
dispatcher (keep-alive fast path, parser, checks, RFC 3581 rewrite, 400s) into the request event and its
encoding, and through the stream framer in random pieces.

Invariants: the dispatcher never raises and never falls into its catch-all (an ERROR log line), the handler
never fails on what the dispatcher let through (every REGISTER becomes an encodable event or a 400), and the
framer raises nothing but SipParseError. SIDECAR_FUZZ_SECONDS (default 3) bounds each target's time,
SIDECAR_FUZZ_SEED picks the random sequence (printed when a target fails, to replay it).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable

import pytest

from events import default_codec
from ingest.fronts.native.dispatch import Dispatcher, NativeIncoming
from ingest.requests import BadRequest, register_received
from ingest.sip import SipParseError, StreamFramer
from tests.unit import sip_samples as samples

BUDGET_S = float(os.environ.get("SIDECAR_FUZZ_SECONDS", "3"))
SEED = int(os.environ.get("SIDECAR_FUZZ_SEED", str(random.SystemRandom().randrange(1 << 32))))
CORPUS = [
    samples.SIPP_REGISTER,
    samples.SOFTPHONE_COMPACT_REGISTER,
    samples.WEBSOCKET_REGISTER,
    samples.FEATURE_SERVER_OPTIONS,
    samples.UNAUTHORIZED_401,
    samples.FOLDED_REGISTER,
    samples.MESSAGE_WITH_BODY,
    b"OPTIONS sip:sbc@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKfz\r\nMax-Forwards: 70\r\n"
    b"From: <sip:ping@10.0.0.9>;tag=1\r\nTo: <sip:sbc@127.0.0.1>\r\nCall-ID: fz@10.0.0.9\r\nCSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n",
]
TOKENS = [
    b"\r\n", b"\r\n\r\n", b"\n", b"\r", b"\x00", b":", b";", b",", b"<", b">", b'"', b"\\", b" ", b"\t", b"=", b"@",
    b"\xff", b"\xc3\xa9", b"\xed\xa0\x80", b"%00", b"sip:", b"sips:", b"Digest ", b"nonce=", b"response=",
    b"expires=", b";rport", b";received=", b"Content-Length: 99999999999\r\n", b"l: 5\r\n", b"CSeq: x REGISTER\r\n",
    b"Via: SIP/2.0/UDP [::1]:5060\r\n", b"Authorization: Digest username=\"\xff\"\r\n", b"9" * 40,
]  # fmt: skip


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A few random edits: byte flips, token insertions, deletions, duplications, splices, truncation."""
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(buffer) + 1)
        choice = rng.randrange(6)
        if choice == 0 and buffer:
            buffer[min(at, len(buffer) - 1)] = rng.randrange(256)
        elif choice == 1:
            buffer[at:at] = rng.choice(TOKENS)
        elif choice == 2:
            del buffer[at : at + rng.randint(1, 40)]
        elif choice == 3:
            end = min(len(buffer), at + rng.randint(1, 60))
            buffer[at:at] = buffer[at:end]
        elif choice == 4:
            other = rng.choice(CORPUS)
            start = rng.randrange(len(other))
            buffer[at:] = other[start:]
        else:
            del buffer[rng.randrange(len(buffer) + 1) :]
    return bytes(buffer)


def fuzz(target: Callable[[bytes, random.Random], None]) -> int:
    """Runs `target` on mutated corpus messages until the budget is spent; the number of inputs tried."""
    rng = random.Random(SEED)
    deadline = time.monotonic() + BUDGET_S
    tried = 0
    while time.monotonic() < deadline:
        data = mutate(rng, rng.choice(CORPUS))
        try:
            target(data, rng)
        except Exception as exc:
            pytest.fail(f"SIDECAR_FUZZ_SEED={SEED} input {tried}: {data!r} raised {exc!r}")
        tried += 1
    return tried


class Registering:
    """The handler ingest would be, without Redis: REGISTERs become events and are encoded, OPTIONS answered."""

    def __init__(self) -> None:
        self.codec = default_codec()
        self.failures: list[str] = []

    def answer_keepalive(self) -> bool:
        return True

    async def __call__(self, incoming: NativeIncoming) -> None:
        try:
            if incoming.message.method.upper() == "REGISTER":
                event = register_received(incoming.message, incoming.facts, "ingest-fuzz", 0)
                if not isinstance(event, BadRequest):
                    self.codec.encode(event)
            incoming.respond_now(200, "OK")
        except Exception as exc:  # noqa: BLE001 - recorded, the test fails on it
            self.failures.append(f"{incoming.message.method} {exc!r}")


async def test_the_dispatcher_survives_mutated_messages(caplog: pytest.LogCaptureFixture) -> None:
    dispatcher = Dispatcher(65536, lambda response: None)
    handler = Registering()
    dispatcher.handler = handler
    dispatcher.sbc_address = "udp/127.0.0.1:5060"
    sent: list[bytes] = []

    def receive(data: bytes, rng: random.Random) -> None:
        transport = rng.choice(("udp", "tcp", "ws"))
        dispatcher.receive(data, transport, ("203.0.113.7", 5062), sent.append, None)

    with caplog.at_level(logging.ERROR, logger="ingest.fronts.native.dispatch"):
        tried = fuzz(receive)
        await dispatcher.drain(5.0)
    assert tried > 100
    assert handler.failures == [], f"SIDECAR_FUZZ_SEED={SEED}: {handler.failures[:5]}"
    assert [r.getMessage() for r in caplog.records] == [], f"SIDECAR_FUZZ_SEED={SEED}"
    assert dispatcher.stats.received == tried and dispatcher.stats.handler_errors == 0


def test_the_stream_framer_raises_only_parse_errors() -> None:
    def frame(data: bytes, rng: random.Random) -> None:
        framer = StreamFramer(max_message_bytes=4096)
        stream = data + b"\r\n\r\n" + rng.choice(CORPUS)
        at = 0
        try:
            while at < len(stream):
                step = rng.randint(1, 200)
                framer.feed(stream[at : at + step])
                at += step
        except SipParseError:
            return

    assert fuzz(frame) > 100
