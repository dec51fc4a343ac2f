"""The registration webhook client against a real aiohttp server on an ephemeral loopback port (SPEC 2.6)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from aiohttp import web

from events import DigestCredentials, RegisterReceived, RegisterRejected, WebhookFailed
from processors.registrar.client_password import ClientPasswordCipher
from processors.registrar.decide import Decision, RegistrarPolicy, decide
from processors.registrar.facts import Account, Facts, RegistrationHook, WebhookFailure, WebhookVerdict
from processors.registrar.nonce import NonceSigner
from processors.registrar.webhook import WebhookCall, call_webhook, webhook_payload
from runtime.webclient import HttpClient

SECRET = "foobar"  # accounts.webhook_secret
NOW_S = 1_700_000_000
NONCES = NonceSigner("enc-secret")
POLICY = RegistrarPolicy(hosting=False, nonces=NONCES, passwords=ClientPasswordCipher("enc-secret"))
USER_AGENT = "jambonz-test/1.0"


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    raw_query: str
    body: bytes
    headers: dict[str, str]
    basic_ok: bool
    signature_ok: bool


@dataclass
class Hook:
    base: str
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def signature_ok(header: str | None, signed_body: bytes) -> bool:
    if not header:
        return False
    parts = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(SECRET.encode(), f"{parts['t']}.".encode() + signed_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", "")) and abs(int(parts["t"]) - NOW_S) < 2


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    state = Hook(base="")

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        expected_basic = "Basic " + base64.b64encode(b"foo:bar").decode()
        signed = body if request.method == "POST" else b'"null"'
        state.seen.append(
            Seen(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                raw_query=request.rel_url.raw_query_string,
                body=body,
                headers=dict(request.headers),
                basic_ok=request.headers.get("Authorization") == expected_basic,
                signature_ok=signature_ok(request.headers.get("Jambonz-Signature"), signed),
            )
        )
        kind = request.match_info["kind"]
        if kind == "ok":
            return web.json_response({"status": "ok", "expires": 45, "call_hook": "https://x/call"})
        if kind == "fail":
            return web.json_response({"status": "fail", "msg": "invalid password"})
        if kind == "blacklist":
            return web.json_response({"status": "fail", "blacklist": True, "headers": {"X-Ban": "1h"}})
        if kind == "404":
            return web.Response(status=404, text="nope")
        if kind == "notjson":
            return web.Response(status=200, text="<html>ok</html>", content_type="text/html")
        if kind == "slow":
            await state.release.wait()  # held until the test ends: the client's deadline must fire
            return web.json_response({"status": "ok"})
        return web.Response(status=500)

    app = web.Application()
    app.router.add_route("*", "/auth/{kind}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.base = f"http://{host}:{port}/auth"
    try:
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[HttpClient]:
    async with HttpClient() as client:
        yield client


def register_request(expires: int = 3600) -> RegisterReceived:
    return RegisterReceived(
        event_id="e1",
        occurred_at=datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
        correlation_id="corr-1",
        reply_to="ingest-a",
        call_id="call-1",
        cseq=1,
        source_ip="203.0.113.5",
        source_port=5062,
        transport="udp",
        via_transport="udp",
        sbc_address="udp/198.51.100.1:5060",
        request_uri="sip:jambonz.org",
        request_uri_host="jambonz.org",
        to_uri="sip:john@jambonz.org",
        aor_user="john",
        aor_host="jambonz.org",
        contact="<sip:john@203.0.113.5:5062>;expires=3600",
        contact_uri="sip:john@203.0.113.5:5062",
        expires=expires,
        authorization=DigestCredentials(
            username="john",
            realm="jambonz.org",
            nonce=NONCES.issue("jambonz.org", NOW_S),
            uri="sip:jambonz.org",
            response="0123456789abcdef0123456789abcdef",
            qop="auth",
            nc="00000001",
            cnonce="c 1&=x",  # needs escaping in a query string
        ),
        headers={"user-agent": "phone/1.0", "to": "<sip:john@jambonz.org>"},
    )


async def call(
    session: HttpClient,
    url: str,
    method: str = "POST",
    *,
    password: str | None = "bar",
    timeout_s: float = 5.0,
    request: RegisterReceived | None = None,
) -> WebhookVerdict:
    hook_row = RegistrationHook(url=url, method=method, username="foo", password=password)
    payload = webhook_payload(request or register_request(), method)
    return await call_webhook(
        session,
        WebhookCall.of(hook_row, SECRET),
        payload,
        timeout_s=timeout_s,
        user_agent=USER_AGENT,
        clock=lambda: float(NOW_S),
    )


def sip_answer(url: str, verdict: WebhookVerdict) -> Decision:
    account = Account(
        account_sid="acc-1",
        is_active=True,
        webhook_secret=SECRET,
        registration_hook=RegistrationHook(url=url, method="POST"),
    )
    step = decide(
        register_request(),
        Facts(account=account, verdict=verdict),
        POLICY,
        now_ms=NOW_S * 1000,
        causation_id="1-0",
    )
    assert isinstance(step, Decision)
    return step


async def test_post_sends_signed_json_with_headers(hook: Hook, session: HttpClient) -> None:
    verdict = await call(session, f"{hook.base}/ok")
    assert verdict.http_status == 200 and verdict.failure is None
    assert verdict.body == {"status": "ok", "expires": 45, "call_hook": "https://x/call"}
    (seen,) = hook.seen
    assert seen.method == "POST" and seen.query == {}
    assert seen.basic_ok and seen.signature_ok
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"] == USER_AGENT
    payload = json.loads(seen.body)
    assert payload == {
        "source_address": "203.0.113.5",
        "source_port": 5062,
        "method": "REGISTER",
        "headers": {"user-agent": "phone/1.0", "to": "<sip:john@jambonz.org>"},
        "expires": 3600,
        "scheme": "digest",
        "username": "john",
        "realm": "jambonz.org",
        "nonce": NONCES.issue("jambonz.org", NOW_S),
        "uri": "sip:jambonz.org",
        "algorithm": "MD5",
        "response": "0123456789abcdef0123456789abcdef",
        "qop": "auth",
        "nc": "00000001",
        "cnonce": "c 1&=x",
    }
    answer = sip_answer(hook.base, verdict)
    assert answer.status == 200 and answer.reply.headers[1] == ("Expires", "30")


async def test_get_sends_the_payload_in_the_query_without_headers(hook: Hook, session: HttpClient) -> None:
    verdict = await call(session, f"{hook.base}/ok", method="GET")
    assert verdict.http_status == 200
    (seen,) = hook.seen
    assert seen.method == "GET" and seen.body == b""
    assert seen.basic_ok and seen.signature_ok  # signed over `<t>."null"`
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.query["source_address"] == "203.0.113.5"
    assert seen.query["source_port"] == "5062"
    assert seen.query["expires"] == "3600"
    assert seen.query["cnonce"] == "c 1&=x"
    assert "cnonce=c%201%26%3Dx" in seen.raw_query  # qs.stringify escapes: space as %20
    assert seen.query["scheme"] == "digest" and seen.query["method"] == "REGISTER"
    assert not any(key.startswith("headers") for key in seen.query)


def test_headers_only_for_a_hook_method_of_exactly_post() -> None:
    assert webhook_payload(register_request(), "POST")["headers"] == {
        "user-agent": "phone/1.0",
        "to": "<sip:john@jambonz.org>",
    }
    assert "headers" not in webhook_payload(register_request(), "GET")
    assert "headers" not in webhook_payload(register_request(), "post")


async def test_get_appends_to_an_existing_query(hook: Hook, session: HttpClient) -> None:
    await call(session, f"{hook.base}/ok?tenant=a", method="GET")
    assert hook.seen[0].query["tenant"] == "a" and hook.seen[0].query["username"] == "john"


async def test_unregister_sends_expires_zero(hook: Hook, session: HttpClient) -> None:
    await call(session, f"{hook.base}/ok", request=register_request(expires=0))
    assert b'"expires":0' in hook.seen[0].body


async def test_basic_auth_only_with_both_credentials(hook: Hook, session: HttpClient) -> None:
    await call(session, f"{hook.base}/ok", password=None)
    assert "Authorization" not in hook.seen[0].headers
    assert hook.seen[0].signature_ok


async def test_fail_maps_to_403_invalid_credentials(hook: Hook, session: HttpClient) -> None:
    verdict = await call(session, f"{hook.base}/fail")
    assert verdict.http_status == 200 and verdict.body == {"status": "fail", "msg": "invalid password"}
    answer = sip_answer(hook.base, verdict)
    assert (answer.status, answer.reply.headers) == (403, [("X-Reason", "Invalid credentials")])


async def test_blacklist_maps_to_403_spammer_with_merged_headers(hook: Hook, session: HttpClient) -> None:
    verdict = await call(session, f"{hook.base}/blacklist")
    answer = sip_answer(hook.base, verdict)
    assert answer.status == 403
    assert answer.reply.headers == [
        ("X-Reason", "detected potential spammer from 203.0.113.5:5062"),
        ("X-Ban", "1h"),
    ]


async def test_404_is_relayed_with_an_alert(hook: Hook, session: HttpClient) -> None:
    verdict = await call(session, f"{hook.base}/404")
    assert verdict == WebhookVerdict(http_status=404, elapsed_ms=verdict.elapsed_ms)
    answer = sip_answer(hook.base, verdict)
    assert answer.status == 404
    failed, rejected = answer.facts
    assert isinstance(failed, WebhookFailed) and failed.status == 404 and failed.url == hook.base
    assert isinstance(rejected, RegisterRejected)


async def test_non_json_is_500_without_alert(hook: Hook, session: HttpClient) -> None:
    verdict = await call(session, f"{hook.base}/notjson")
    assert (verdict.http_status, verdict.failure) == (200, WebhookFailure.NOT_JSON)
    answer = sip_answer(hook.base, verdict)
    assert answer.status == 500 and [type(f) for f in answer.facts] == [RegisterRejected]


async def test_slow_webhook_hits_the_deadline(hook: Hook, session: HttpClient) -> None:
    verdict = await call(session, f"{hook.base}/slow", timeout_s=0.05)
    assert verdict.failure is WebhookFailure.TIMEOUT
    assert len(hook.seen) == 1  # the request did reach the server
    answer = sip_answer(hook.base, verdict)
    assert answer.status == 500
    failed = answer.facts[0]
    assert isinstance(failed, WebhookFailed) and failed.status is None


async def test_connection_refused_is_unreachable(session: HttpClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    verdict = await call(session, f"http://127.0.0.1:{port}/auth")
    assert verdict.failure is WebhookFailure.UNREACHABLE and verdict.http_status is None
    answer = sip_answer("http://x", verdict)
    assert answer.status == 500 and isinstance(answer.facts[0], WebhookFailed)


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/x", "http://"])
async def test_unusable_url_is_unreachable(session: HttpClient, url: str) -> None:
    verdict = await call(session, url)
    assert verdict.failure is WebhookFailure.UNREACHABLE


async def test_logs_hold_no_credentials(
    hook: Hook, session: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="processors.registrar")
    url = hook.base.replace("http://", "http://foo:hunter2@") + "/404?token=s3cret"
    verdict = await call(session, url, password=None)
    assert verdict.http_status == 404
    text = caplog.text
    assert "status=404" in text and "/auth/404" in text
    # the URL's password, its query token, the Basic header it becomes (foo:hunter2), the digest response
    for secret in ("hunter2", "s3cret", "Zm9vOmh1bnRlcjI", "0123456789abcdef0123456789abcdef"):
        assert secret not in text
