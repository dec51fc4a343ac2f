"""The registration webhook call (SPEC 2.6): payload, signature, deadline, and a verdict.

One pooled `runtime.webclient.HttpClient` is passed in. `call_webhook` never raises for an HTTP or
network problem: it returns a `WebhookVerdict` that `decide.judge_webhook` maps to an answer.
Deliberate change: jambonz has no timeout (Node fetch waits minutes); here a deadline
(SIDECAR_WEBHOOK_TIMEOUT_S, default 5 s) covers connect, headers and body, and running out of
it counts as unreachable (500 plus a WebhookFailed). The webhook password, the Authorization
header and the digest response are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import msgspec
import yarl

from events import RegisterReceived
from processors.registrar.facts import RegistrationHook, WebhookFailure, WebhookVerdict
from processors.registrar.sha256mac import mac_for
from runtime.webclient import HttpClient, HttpError

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Jambonz-Signature"
# jambonz signs `<t>.` + JSON.stringify(body || 'null') and a GET has no body: the JSON string "null".
GET_SIGNED_BODY = b'"null"'

Payload = dict[str, str | int | dict[str, str]]


@dataclass(frozen=True, slots=True)
class WebhookCall:
    """Where and how to call: the hook row and the account's signing secret."""

    url: str
    method: str = "POST"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, hook: RegistrationHook, webhook_secret: str | None) -> WebhookCall:
        return cls(hook.url, hook.method, hook.username, hook.password, webhook_secret)

    @property
    def is_get(self) -> bool:
        return (self.method or "POST").upper() == "GET"


def loggable_url(url: str) -> str:
    """The URL without user:password@ or query, for log lines."""
    try:
        parsed = yarl.URL(url)
        if parsed.absolute:
            parsed = parsed.with_user(None)
        return str(parsed.with_query(None).with_fragment(None))
    except (TypeError, ValueError):
        return "<unparseable url>"


def webhook_payload(request: RegisterReceived, hook_method: str) -> Payload:
    """source_address, source_port, method, headers (only when the DB method is exactly POST),
    expires and every parsed Authorization field that is present (SPEC 2.6)."""
    payload: Payload = {
        "source_address": request.source_ip,
        "source_port": request.source_port,
        "method": "REGISTER",
    }
    if hook_method == "POST":
        payload["headers"] = dict(request.headers)
    payload["expires"] = request.expires if request.expires is not None else 0
    credentials = request.authorization
    if credentials is not None:
        for name, value in msgspec.structs.asdict(credentials).items():
            if value is not None:
                payload[name] = value
        payload.setdefault("scheme", "digest")
        payload.setdefault("algorithm", "MD5")
    return payload


def signature(secret: str, timestamp_s: int, signed_body: bytes) -> str:
    """`t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`."""
    mac = mac_for(secret).hexdigest(f"{timestamp_s}.".encode() + signed_body)
    return f"t={timestamp_s},v1={mac}"


def query_string(payload: Payload) -> str:
    """The payload form-encoded like `qs.stringify` (RFC 3986 escapes, spaces as %20)."""
    flat = {key: value for key, value in payload.items() if not isinstance(value, dict)}
    return urlencode(flat, quote_via=quote, safe="")


def build_request(
    call: WebhookCall, payload: Payload, *, now_s: float, user_agent: str | None
) -> tuple[str, str, dict[str, str], bytes | None]:
    """Method, URL, headers and body of the webhook request. Pure, for the tests too."""
    headers = {"Content-Type": "application/json"}
    if call.username and call.password:
        token = base64.b64encode(f"{call.username}:{call.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    if user_agent:
        headers["User-Agent"] = user_agent
    if call.is_get:
        # jambonz appends `?` blindly; we join with `&` when the URL already has a query.
        joiner = "&" if "?" in call.url else "?"
        url = f"{call.url}{joiner}{query_string(payload)}"
        body, signed = None, GET_SIGNED_BODY
    else:
        url = call.url
        body = signed = msgspec.json.encode(payload)
    if call.secret:
        headers[SIGNATURE_HEADER] = signature(call.secret, int(now_s), signed)
    return ("GET" if call.is_get else "POST"), url, headers, body


async def call_webhook(
    client: HttpClient,
    call: WebhookCall,
    payload: Payload,
    *,
    timeout_s: float = 5.0,
    user_agent: str | None = None,
    clock: Callable[[], float] = time.time,
) -> WebhookVerdict:
    """Call the webhook once, within `timeout_s`; redirects are followed, as with fetch."""
    started = time.perf_counter()

    def verdict(
        http_status: int | None = None,
        body: dict[str, object] | None = None,
        failure: WebhookFailure | None = None,
    ) -> WebhookVerdict:
        elapsed_ms = (time.perf_counter() - started) * 1000
        return WebhookVerdict(http_status=http_status, body=body, failure=failure, elapsed_ms=elapsed_ms)

    try:
        method, url, headers, body = build_request(call, payload, now_s=clock(), user_agent=user_agent)
        async with asyncio.timeout(timeout_s):
            response = await client.request(method, url, headers=headers, body=body)
    except TimeoutError:
        log.warning("webhook timed out url=%s timeout_s=%s", loggable_url(call.url), timeout_s)
        return verdict(failure=WebhookFailure.TIMEOUT)
    except HttpError as exc:
        # The error names what failed (connect, framing), never a header or the URL's credentials.
        log.warning("webhook unreachable url=%s error=%s", loggable_url(call.url), exc)
        return verdict(failure=WebhookFailure.UNREACHABLE)
    if response.status != 200:
        log.info("webhook answered url=%s status=%s", loggable_url(call.url), response.status)
        return verdict(http_status=response.status)
    try:
        parsed = msgspec.json.decode(response.body)
    except msgspec.DecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        log.info("webhook answered 200 without a JSON object url=%s", loggable_url(call.url))
        return verdict(http_status=200, failure=WebhookFailure.NOT_JSON)
    return verdict(http_status=200, body=parsed)
