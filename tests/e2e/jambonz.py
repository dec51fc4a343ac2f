"""The data of SPEC section 6 in a real MariaDB, and a real customer auth webhook (aiohttp) for it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomysql
from aiohttp import web

from tests.conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER

WEBHOOK_SECRET = "foobar"
USERS = {"john": "1234", "jane": "5678"}
REALM = "jambonz.org"
MAX_GRANT_S = 45


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def expected_response(payload: dict[str, str], password: str, method: str = "REGISTER") -> str:
    """RFC 2617 digest response, written independently of the service's own implementation."""
    ha1 = md5(f"{payload['username']}:{payload['realm']}:{password}")
    ha2 = md5(f"{method}:{payload['uri']}")
    if payload.get("qop"):
        return md5(f"{ha1}:{payload['nonce']}:{payload['nc']}:{payload['cnonce']}:{payload['qop']}:{ha2}")
    return md5(f"{ha1}:{payload['nonce']}:{ha2}")


@dataclass
class SeenRequest:
    method: str
    payload: dict[str, object]
    signature_ok: bool
    basic_ok: bool


@dataclass
class AuthWebhook:
    """customer-auth-server's behaviour: Basic foo:bar, john/1234 and jane/5678, grants min(requested, 45)."""

    seen: list[SeenRequest] = field(default_factory=list)
    delay_s: float = 0.0
    delay_for: Callable[[dict[str, object]], float] | None = None  # per call (its payload), instead of delay_s
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/auth"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/auth", self._auth)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _signature_ok(self, header: str, body: str) -> bool:
        parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
        timestamp, signature = parts.get("t", ""), parts.get("v1", "")
        mac = hmac.new(WEBHOOK_SECRET.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()
        fresh = timestamp.isdigit() and abs(int(timestamp) - time.time()) < 300
        return fresh and hmac.compare_digest(mac, signature)

    async def _auth(self, request: web.Request) -> web.Response:
        import asyncio

        body = await request.text()
        payload: dict[str, object] = json.loads(body) if request.method == "POST" else dict(request.query)
        signed = body if request.method == "POST" else '"null"'
        basic = "Basic " + base64.b64encode(b"foo:bar").decode()
        seen = SeenRequest(
            request.method,
            payload,
            self._signature_ok(request.headers.get("Jambonz-Signature", ""), signed),
            request.headers.get("Authorization") == basic,
        )
        self.seen.append(seen)
        delay_s = self.delay_for(payload) if self.delay_for is not None else self.delay_s
        if delay_s:
            await asyncio.sleep(delay_s)
        if not seen.basic_ok:
            return web.Response(status=401)
        if not seen.signature_ok:
            return web.Response(status=403)
        password = USERS.get(str(payload.get("username")))
        fields = {k: str(v) for k, v in payload.items() if not isinstance(v, dict)}
        if (
            password is None
            or payload.get("realm") != REALM
            or expected_response(fields, password) != payload.get("response")
        ):
            return web.json_response({"status": "fail", "msg": "invalid password"})
        requested = int(str(payload.get("expires", 3600)))
        return web.json_response(
            {
                "status": "ok",
                "expires": min(requested, MAX_GRANT_S),
                "call_hook": "http://127.0.0.1:3000/call",
            }
        )


async def populate(database: str, webhook_url: str) -> dict[str, str]:
    """SPEC 6 populate-test-data: products, the webhook, SP A, jambonz.org and deactivated.jambonz.org."""
    sids = {
        name: str(uuid.uuid4())
        for name in ("voice", "device", "api", "hook", "sp", "account", "deactivated", "subscription")
    }
    connection = await aiomysql.connect(
        host=MYSQL_HOST,
        port=MYSQL_PORT,
        user=MYSQL_USER,
        password=MYSQL_PASSWORD,
        db=database,
        autocommit=True,
    )
    try:
        async with connection.cursor() as c:
            await c.executemany(
                "INSERT INTO products (product_sid, name, category) VALUES (%s, %s, %s)",
                [
                    (sids["voice"], "concurrent call session", "voice_call_session"),
                    (sids["device"], "registered device", "device"),
                    (sids["api"], "api call", "api_rate"),
                ],
            )
            await c.execute(
                "INSERT INTO webhooks (webhook_sid, url, method, username, password) "
                "VALUES (%s, %s, 'POST', 'foo', 'bar')",
                (sids["hook"], webhook_url),
            )
            await c.execute(
                "INSERT INTO service_providers (service_provider_sid, name, root_domain, "
                "registration_hook_sid) VALUES (%s, 'SP A', 'jambonz.org', %s)",
                (sids["sp"], sids["hook"]),
            )
            await c.execute(
                "INSERT INTO accounts (account_sid, name, sip_realm, service_provider_sid, "
                "registration_hook_sid, webhook_secret, device_to_call_ratio) "
                "VALUES (%s, 'test', 'jambonz.org', %s, %s, %s, 0)",
                (sids["account"], sids["sp"], sids["hook"], WEBHOOK_SECRET),
            )
            await c.execute(
                "INSERT INTO accounts (account_sid, name, sip_realm, service_provider_sid, "
                "registration_hook_sid, webhook_secret, is_active) "
                "VALUES (%s, 'deactivated', 'deactivated.jambonz.org', %s, %s, %s, 0)",
                (sids["deactivated"], sids["sp"], sids["hook"], WEBHOOK_SECRET),
            )
            await c.execute(
                "INSERT INTO account_subscriptions (account_subscription_sid, account_sid, pending) "
                "VALUES (%s, %s, 0)",
                (sids["subscription"], sids["account"]),
            )
            await c.executemany(
                "INSERT INTO account_products (account_product_sid, account_subscription_sid, "
                "product_sid, quantity) VALUES (%s, %s, %s, %s)",
                [
                    (str(uuid.uuid4()), sids["subscription"], sids["voice"], 20),
                    (str(uuid.uuid4()), sids["subscription"], sids["device"], 2),
                ],
            )
    finally:
        connection.close()
    return sids
