"""The bench's registration webhook: a small, fast aiohttp server in its own process (uvloop).

It checks what a careful customer webhook checks: the Basic credentials of the webhook row,
the `Jambonz-Signature` HMAC (fresh timestamp, account secret) and the RFC 2617 digest of the
bench users (u000000 to u999999, one shared password) in its account's realm. It answers
`{"status": "ok", "expires": <requested>}`, or `{"status": "fail"}` with the reason counted.

A customer's webhook is an HTTP call across the internet: with BENCH_WEBHOOK_DELAY_MS it answers
each call that many milliseconds after it arrived (an asyncio sleep: no CPU spent waiting). With
BENCH_WEBHOOK_HANG=1 it is a broken customer webhook: it reads each call, counts it as `hung` and
never answers (the caller's own timeout ends the call; on shutdown the held calls get a 503).

Run as `python -m bench.webhook`; the secrets come in the environment (BENCH_WEBHOOK_BASIC as
user:password, BENCH_WEBHOOK_SECRET, BENCH_USER_PASSWORD), and BENCH_REALM (default bench.local).
It binds 127.0.0.1 on a free port, prints `listening <port>` and serves until SIGTERM. GET /stats
gives its counters.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import msgspec
import uvloop
from aiohttp import web

from bench.digest import REALM, digest_response, is_bench_user

SIGNATURE_HEADER = "Jambonz-Signature"
SIGNATURE_MAX_AGE_S = 300
OK_PREFIX = b'{"status":"ok","expires":'


class AuthPayload(msgspec.Struct):
    """The fields of jambonz's registration webhook body that the verdict needs."""

    username: str = ""
    realm: str = ""
    nonce: str = ""
    uri: str = ""
    response: str = ""
    method: str = "REGISTER"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    expires: int = 3600


@dataclass
class Verifier:
    basic_credentials: str
    webhook_secret: str
    user_password: str
    realm: str = REALM
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._basic = "Basic " + base64.b64encode(self.basic_credentials.encode()).decode()
        self._secret = self.webhook_secret.encode()
        self._decoder = msgspec.json.Decoder(AuthPayload)

    def signature_ok(self, header: str, body: bytes) -> bool:
        timestamp = signature = ""
        for item in header.split(","):
            name, _, value = item.partition("=")
            if name == "t":
                timestamp = value
            elif name == "v1":
                signature = value
        if not timestamp.isdigit() or abs(int(timestamp) - time.time()) > SIGNATURE_MAX_AGE_S:
            return False
        mac = hmac.new(self._secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(mac, signature)

    def verdict(self, authorization: str | None, signature: str, body: bytes) -> tuple[int, bytes]:
        """HTTP status and JSON body of the answer; counts the outcome."""
        if authorization != self._basic:
            self.counts["bad_basic"] += 1
            return 401, b""
        if not self.signature_ok(signature, body):
            self.counts["bad_signature"] += 1
            return 403, b""
        try:
            payload = self._decoder.decode(body)
        except msgspec.DecodeError:
            self.counts["bad_body"] += 1
            return 400, b""
        if not is_bench_user(payload.username) or payload.realm != self.realm:
            self.counts["unknown_user"] += 1
            return 200, b'{"status":"fail","msg":"unknown user"}'
        expected = digest_response(
            username=payload.username,
            realm=payload.realm,
            password=self.user_password,
            method=payload.method,
            uri=payload.uri,
            nonce=payload.nonce,
            qop=payload.qop,
            nc=payload.nc,
            cnonce=payload.cnonce,
        )
        if not hmac.compare_digest(expected, payload.response):
            self.counts["bad_digest"] += 1
            return 200, b'{"status":"fail","msg":"invalid password"}'
        self.counts["ok"] += 1
        return 200, OK_PREFIX + str(payload.expires).encode() + b"}"


@dataclass(frozen=True)
class Pace:
    """When an answer leaves: `delay_s` after the call arrived, or never while `hang` is unset."""

    delay_s: float = 0.0
    hang: asyncio.Event | None = None  # set on shutdown: the held calls are let go


def build_app(verifier: Verifier, pace: Pace | None = None) -> web.Application:
    pace = pace or Pace()

    async def auth(request: web.Request) -> web.Response:
        body = await request.read()
        if pace.hang is not None:
            verifier.counts["hung"] += 1
            await pace.hang.wait()
            return web.Response(status=503)
        if pace.delay_s:
            await asyncio.sleep(pace.delay_s)
        status, answer = verifier.verdict(
            request.headers.get("Authorization"), request.headers.get(SIGNATURE_HEADER, ""), body
        )
        return web.Response(status=status, body=answer, content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(dict(verifier.counts))

    app = web.Application()
    app.router.add_post("/auth", auth)
    app.router.add_get("/stats", stats)
    return app


async def serve(verifier: Verifier, *, delay_ms: int = 0, hang: bool = False) -> None:
    stop = asyncio.Event()
    pace = Pace(delay_s=delay_ms / 1000, hang=stop if hang else None)
    runner = web.AppRunner(build_app(verifier, pace), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"listening {port}", flush=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> int:
    try:
        verifier = Verifier(
            os.environ["BENCH_WEBHOOK_BASIC"],
            os.environ["BENCH_WEBHOOK_SECRET"],
            os.environ["BENCH_USER_PASSWORD"],
            realm=os.environ.get("BENCH_REALM", REALM),
        )
    except KeyError as exc:
        print(f"bench.webhook: {exc.args[0]} is required", file=sys.stderr)
        return 2
    delay_text = os.environ.get("BENCH_WEBHOOK_DELAY_MS", "0")
    if not delay_text.isdigit():
        print(f"bench.webhook: BENCH_WEBHOOK_DELAY_MS wants milliseconds, got {delay_text!r}", file=sys.stderr)
        return 2
    uvloop.run(serve(verifier, delay_ms=int(delay_text), hang=os.environ.get("BENCH_WEBHOOK_HANG") == "1"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
