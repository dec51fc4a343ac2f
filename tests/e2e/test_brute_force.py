"""Brute-force throttling end to end: wrong passwords for one user from one source against the service with a
real webhook. The first ten are judged by the webhook; from then on the AOR is blocked: 403 `Too many failed
authentications`, no webhook call, one `BlockStarted` fact; `blocks` lists it, `blocks clear` lifts it, and the
right password is accepted after.

SIDECAR_TEST_BRUTE_FORCE_ATTEMPTS (default 60) and SIDECAR_TEST_BRUTE_FORCE_RATE (default 200/s) scale the run.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid

from redis.asyncio import Redis

from events import BlockStarted, default_codec
from processors.registrar.blocks import clear_block, list_blocks
from processors.registrar.digest import compute_response
from processors.registrar.throttle import REASON_BLOCKED
from tests.e2e.conftest import start_sidecar, stop_sidecar
from tests.e2e.jambonz import REALM, USERS, AuthWebhook, populate

ATTEMPTS = int(os.environ.get("SIDECAR_TEST_BRUTE_FORCE_ATTEMPTS", "60"))
RATE_PER_S = float(os.environ.get("SIDECAR_TEST_BRUTE_FORCE_RATE", "200"))
USER = "john"
AOR = f"{USER}@{REALM}"


class Phone(asyncio.DatagramProtocol):
    """A UDP user agent that sends REGISTERs and hands back each answer by Call-ID."""

    def __init__(self) -> None:
        self.answers: dict[str, asyncio.Future[bytes]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        found = re.search(rb"(?im)^call-id:\s*(\S+)", data)
        waiter = self.answers.get(found.group(1).decode()) if found else None
        if waiter is not None and not waiter.done():
            waiter.set_result(data)

    async def register(self, port: int, authorization: str | None = None) -> bytes:
        assert self.transport is not None
        call_id = f"{uuid.uuid4().hex}@brute"
        local_port = self.transport.get_extra_info("sockname")[1]
        lines = [
            f"REGISTER sip:{REALM} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport",
            "Max-Forwards: 70",
            f"From: <sip:{AOR}>;tag={uuid.uuid4().hex[:8]}",
            f"To: <sip:{AOR}>",
            f"Call-ID: {call_id}",
            "CSeq: 1 REGISTER",
            f"Contact: <sip:{USER}@127.0.0.1:{local_port}>;expires=60",
        ]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        lines.append("Content-Length: 0")
        waiter = asyncio.get_running_loop().create_future()
        self.answers[call_id] = waiter
        self.transport.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), ("127.0.0.1", port))
        try:
            return await asyncio.wait_for(waiter, 5.0)
        finally:
            del self.answers[call_id]


def digest(nonce: str, password: str) -> str:
    uri, cnonce, nc = f"sip:{REALM}", uuid.uuid4().hex[:8], "00000001"
    response = compute_response(
        username=USER, realm=REALM, password=password, method="REGISTER", uri=uri, nonce=nonce, qop="auth", nc=nc,
        cnonce=cnonce,
    )  # fmt: skip
    return (
        f'Digest username="{USER}", realm="{REALM}", nonce="{nonce}", uri="{uri}", response="{response}", '
        f'algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"'
    )


def status_and_reason(answer: bytes) -> tuple[int, str | None]:
    status = int(answer.split(b" ", 2)[1])
    found = re.search(rb"(?im)^x-reason:\s*(.*?)\r$", answer)
    return status, found.group(1).decode() if found else None


async def test_wrong_passwords_lead_to_a_block_without_webhook_calls(
    cluster_id: str, mysql_db: str, redis: Redis, webhook: AuthWebhook
) -> None:
    await populate(mysql_db, webhook.url)
    sidecar = await start_sidecar(cluster_id, mysql_db)
    loop = asyncio.get_running_loop()
    transport, phone = await loop.create_datagram_endpoint(Phone, local_addr=("127.0.0.1", 0))
    try:
        challenge = (await phone.register(sidecar.udp_port)).decode()
        nonce_found = re.search(r'nonce="([^"]+)"', challenge)
        assert challenge.startswith("SIP/2.0 401") and nonce_found
        nonce = nonce_found.group(1)
        calls_before = len(webhook.seen)

        started = time.monotonic()
        answers: list[tuple[int, str | None]] = []
        for i in range(ATTEMPTS):  # one after another at the rate, as a guessing script does
            await asyncio.sleep(max(0.0, started + i / RATE_PER_S - time.monotonic()))
            answers.append(status_and_reason(await phone.register(sidecar.udp_port, digest(nonce, f"guess-{i}"))))
        elapsed_s = time.monotonic() - started

        judged = [i for i, answer in enumerate(answers) if answer == (403, "Invalid credentials")]
        blocked = [i for i, answer in enumerate(answers) if answer == (403, REASON_BLOCKED)]
        webhook_calls = len(webhook.seen) - calls_before
        print(
            f"brute force: {ATTEMPTS} wrong passwords in {elapsed_s:.1f} s; judged {len(judged)}, "
            f"blocked {len(blocked)} (first at attempt {blocked[0] + 1 if blocked else None}); "
            f"webhook calls {webhook_calls}"
        )
        assert judged == list(range(10)) and blocked == list(range(10, ATTEMPTS))
        assert webhook_calls == 10

        entries = await redis.xrange(sidecar.names.registrations)
        codec = default_codec()
        starts = [e for e in (codec.decode(fields) for _, fields in entries) if isinstance(e, BlockStarted)]
        assert [(s.subject_kind, s.subject, s.failures, s.block_s) for s in starts] == [("aor", AOR, 10, 300)]

        blocks = await list_blocks(redis, sidecar.names)
        assert [(b.kind, b.subject, b.failures, b.strike) for b in blocks] == [("aor", AOR, 10, 1)]
        assert 290_000 < blocks[0].remaining_ms <= 300_000
        # Still blocked for the right password, until an operator lifts the block.
        right = digest(nonce, USERS[USER])
        assert status_and_reason(await phone.register(sidecar.udp_port, right)) == (403, REASON_BLOCKED)
        assert (await clear_block(redis, sidecar.names, f"sip:{AOR}"))[2]
        assert await list_blocks(redis, sidecar.names) == []
        assert status_and_reason(await phone.register(sidecar.udp_port, right))[0] == 200
    finally:
        transport.close()
        await stop_sidecar(sidecar)
        await redis.delete(f"user:{AOR}")
        await redis.zrem("active-user", f"user:{AOR}")
