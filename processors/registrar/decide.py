"""The registrar's decisions (SPEC 2): pure functions of a RegisterReceived and the gathered facts.

`decide()` runs the stages of jambonz's middleware chain in order and returns either a
`Decision` (the fact events for the `registrations` stream and the `ReplyIssued` for the
ingest that holds the transaction) or the `Need` for one more fact. The shell gathers that
fact and calls `decide()` again, so no I/O ever happens here and every SPEC row is a table
test. The clock is the `now_ms` argument; nothing reads the time.

Stages, each usable on its own:
  screen            Request-URI IPv4, Contact, expires, To-URI            (SPEC 2.1, 2.2)
  check_cache       cached binding from the same source, > 30 s left       (SPEC 2.3)
  check_block       a blocked source IP or AOR (brute-force throttling, throttle.py)
  check_account     realm → account, deactivated, unknown realm            (SPEC 2.2)
  check_device_limit  hosted mode, register only                           (SPEC 2.4)
  check_credentials 401 challenge, malformed Authorization, stale nonce    (SPEC 2.5, DESIGN 7)
  judge_webhook / judge_client  the verdict on the credentials             (SPEC 2.6, 2.7)
  accept            the binding and the 200, or the unregister             (SPEC 2.8, 2.9)
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypedDict

from events import (
    BlockStarted,
    DeviceLimitReached,
    Event,
    RegisterChallenged,
    RegisterReceived,
    RegisterRejected,
    RegistrationGranted,
    RegistrationRefreshed,
    RegistrationRemoved,
    ReplyIssued,
    WebhookFailed,
    new_event_id,
)
from events.sip_status import REASON_PHRASES, reason_phrase
from processors.registrar.client_password import ClientPasswordCipher, ClientPasswordError
from processors.registrar.digest import missing_fields, verify_response
from processors.registrar.facts import (
    NOT_FOUND,
    Absent,
    Account,
    Capacity,
    Client,
    Facts,
    RegistrationHook,
    StoredBinding,
    StoreFailure,
    WebhookFailure,
    WebhookVerdict,
)
from processors.registrar.grant import Grant, grant_from_webhook, merge_headers
from processors.registrar.nonce import NonceCheck, NonceSigner
from processors.registrar.throttle import REASON_BLOCKED, ThrottlePolicy, ThrottleState, count_failure, success_writes
from processors.registrar.webhook import loggable_url
from runtime.handling import RedisCommand

NAT_EXPIRES_S = 30  # advertised to UDP clients, and in every cached answer
CACHE_MARGIN_S = 30  # a cached binding answers only while more than this is left

X_REASON = "X-Reason"
REASON_CONTACT_REQUIRED = "Contact header is required for REGISTER requests"
REASON_INVALID_AOR = "Invalid address of record"
REASON_DEACTIVATED = "Account has been deactivated"
REASON_UNKNOWN_REALM = "Unknown or invalid realm"
REASON_INVALID_CREDENTIALS = "Invalid credentials"
REASON_LIMIT_CHECK = "Device limit check failed"
REASON_AUTHORIZATION = "Malformed Authorization header"
BUSY_RETRY_AFTER_S = 5
PHRASE_MAX_DEVICES = "Max Devices Registered"

_IPV4_HOST = re.compile(r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}")  # jambonz's rejectIpv4 test, fullmatch
_CONTACT_EXPIRES = re.compile(r"expires=\d+")  # case-sensitive, first occurrence, like jambonz


class Need(enum.Enum):
    """The fact `decide()` asks the shell for next."""

    ACCOUNT = "account"
    CAPACITIES = "capacities"
    DEVICE_COUNT = "device-count"
    WEBHOOK = "webhook"
    CLIENT = "client"


@dataclass(frozen=True, slots=True)
class RegistrarPolicy:
    """What does not change between requests: hosted mode and the keys."""

    hosting: bool
    nonces: NonceSigner
    passwords: ClientPasswordCipher
    throttle: ThrottlePolicy | None = None  # brute-force throttling; applied when the facts carry its state


@dataclass(frozen=True, slots=True)
class Decision:
    """The facts for the `registrations` stream, the reply for `replies:<reply_to>`, and the throttle's
    counter writes (committed with them)."""

    facts: tuple[Event, ...]
    reply: ReplyIssued
    writes: tuple[RedisCommand, ...] = ()
    throttled: bool = False  # refused unheard: its source IP or AOR is blocked

    @property
    def status(self) -> int:
        return self.reply.status


class Envelope(TypedDict):
    """The envelope fields of `events.Event`, typed (what `events.stamp` builds, with our clock)."""

    event_id: str
    occurred_at: datetime
    correlation_id: str
    causation_id: str | None


@dataclass(frozen=True, slots=True)
class Situation:
    """One request being decided: the request, the time, and the stream entry that carried it."""

    request: RegisterReceived
    now_ms: int
    causation_id: str | None

    @property
    def aor(self) -> str | None:
        return self.request.aor

    @property
    def is_unregister(self) -> bool:
        return self.request.expires == 0

    @property
    def proxy(self) -> str:
        return f"sip:{self.request.source_ip}:{self.request.source_port}"

    @property
    def username(self) -> str | None:
        credentials = self.request.authorization
        return credentials.username if credentials is not None else None

    def envelope(self) -> Envelope:
        """A new event's envelope: the request's correlation id, caused by its stream entry."""
        return Envelope(
            event_id=new_event_id(),
            occurred_at=datetime.fromtimestamp(self.now_ms / 1000, UTC),
            correlation_id=self.request.correlation_id,
            causation_id=self.causation_id,
        )

    def answer(self, status: int, reason: str, headers: Sequence[tuple[str, str]], *facts: Event) -> Decision:
        reply = ReplyIssued(**self.envelope(), status=status, reason=reason, headers=list(headers))
        return Decision(facts=facts, reply=reply)

    def reject(
        self,
        status: int,
        cause: str,
        *,
        reason: str | None = None,
        x_reason: str | None = None,
        headers: Sequence[tuple[str, str]] | None = None,
        account: Account | None = None,
        alerts: Sequence[Event] = (),
    ) -> Decision:
        reason = reason if reason is not None else reason_phrase(status)
        if headers is None:
            headers = [(X_REASON, x_reason)] if x_reason else []
        rejected = RegisterRejected(
            **self.envelope(),
            aor=self.aor,
            status=status,
            reason=reason,
            cause=cause,
            x_reason=x_reason,
            source_ip=self.request.source_ip,
            source_port=self.request.source_port,
            call_id=self.request.call_id,
            account_sid=account.account_sid if account is not None else None,
        )
        return self.answer(status, reason, headers, *alerts, rejected)


def is_relayable_failure(status: int) -> bool:
    """A status a webhook's HTTP answer may be relayed as: a known SIP failure code (3xx-6xx).

    jambonz relays any non-200 HTTP status and, when drachtio rejects the number, sends
    nothing (the phone times out). We answer 500 instead for an unknown code and also for
    2xx/1xx, which would tell the phone it is registered when no binding was stored.
    """
    return status >= 300 and status in REASON_PHRASES


def rewrite_contact_expires(contact: str, expires_s: int) -> str:
    """The Contact text with its first `expires=<digits>` set to `expires_s`; unchanged if none."""
    return _CONTACT_EXPIRES.sub(f"expires={expires_s}", contact, count=1)


def sip_protocol(via_transport: str | None) -> str | None:
    """The record's `protocol` from the top Via transport.

    Deliberate change (SPEC 8 row 45): TLS is recorded as `tls`; jambonz leaves it out.
    """
    if not via_transport:
        return None
    transport = via_transport.lower().rsplit("/", 1)[-1].strip()
    for protocol in ("wss", "ws", "tcp", "udp", "tls"):
        if transport.startswith(protocol):
            return protocol
    return None


# --- stages -----------------------------------------------------------------------------


def screen(sit: Situation) -> Decision | None:
    """rejectIpv4 and the registration parser (SPEC 2.1), then the To-URI check (SPEC 2.2)."""
    request = sit.request
    host = request.request_uri_host
    if not host or _IPV4_HOST.fullmatch(host):
        return sit.reject(403, "Request-URI has no host or an IPv4 host; a SIP realm is required")
    if request.contact is None:
        return sit.reject(400, "no Contact header", x_reason=REASON_CONTACT_REQUIRED)
    if request.expires is None or request.expires < 0:
        return sit.reject(400, "no expires parameter or Expires header")
    if not request.aor_host:
        return sit.reject(403, "To-URI does not parse", x_reason=REASON_INVALID_AOR)
    return None


def check_cache(sit: Situation, binding: StoredBinding | None) -> Decision | None:
    """Answer a refresh from the bound source without authentication (SPEC 2.3)."""
    if sit.is_unregister or binding is None or binding.proxy != sit.proxy:
        return None
    if binding.expiry_time_ms is None or sit.now_ms + CACHE_MARGIN_S * 1000 >= binding.expiry_time_ms:
        return None
    aor = sit.aor
    assert aor is not None  # screened
    contact = rewrite_contact_expires(sit.request.contact or "", NAT_EXPIRES_S)
    refreshed = RegistrationRefreshed(
        **sit.envelope(),
        aor=aor,
        advertised_expires_s=NAT_EXPIRES_S,
        expiry_time_ms=binding.expiry_time_ms,
        source_ip=sit.request.source_ip,
        source_port=sit.request.source_port,
        call_id=sit.request.call_id,
        contact=sit.request.contact_uri,
    )
    return sit.answer(200, "OK", [("Contact", contact), ("Expires", str(NAT_EXPIRES_S))], refreshed)


def check_account(
    sit: Situation, account: Account | Absent | StoreFailure | None, hosting: bool
) -> Account | Decision | Need:
    """The account of the realm, or the 403/500 of SPEC 2.2 and 2.5."""
    if account is None:
        return Need.ACCOUNT
    if isinstance(account, StoreFailure):
        if account.refused:
            # jambonz lets the request through on ECONNREFUSED, without an account, so the
            # digest step answers "Unknown or invalid realm" (in hosted mode too).
            return sit.reject(403, f"account lookup could not connect: {account.detail}", x_reason=REASON_UNKNOWN_REALM)
        return sit.reject(500, f"account lookup failed: {account.detail}", x_reason="Account lookup failed")
    if account is NOT_FOUND:
        if hosting:
            return sit.reject(403, "unknown realm (hosted mode)")
        return sit.reject(403, "unknown realm", x_reason=REASON_UNKNOWN_REALM)
    assert isinstance(account, Account)
    if not account.is_active:
        return sit.reject(403, "account deactivated", x_reason=REASON_DEACTIVATED, account=account)
    return account


def device_limit(account: Account, capacities: Sequence[Capacity]) -> int | None:
    """voice_call_session quantity × device_to_call_ratio + device quantity; None without calls."""
    calls = next((c for c in capacities if c.category == "voice_call_session"), None)
    if calls is None:
        return None
    limit = calls.quantity * account.device_to_call_ratio
    devices = next((c for c in capacities if c.category == "device"), None)
    if devices is not None and devices.quantity:
        limit += devices.quantity
    return limit


def check_device_limit(
    sit: Situation,
    account: Account,
    capacities: tuple[Capacity, ...] | StoreFailure | None,
    device_count: int | StoreFailure | None,
) -> Decision | Need | None:
    """Hosted mode, register only (SPEC 2.4): 503 Max Devices Registered past the limit."""
    if capacities is None:
        return Need.CAPACITIES
    if isinstance(capacities, StoreFailure):
        if capacities.refused:
            return None
        return sit.reject(
            500, f"capacity lookup failed: {capacities.detail}", x_reason=REASON_LIMIT_CHECK, account=account
        )
    limit = device_limit(account, capacities)
    if limit is None:
        return sit.reject(
            500, "account has no voice_call_session product", x_reason=REASON_LIMIT_CHECK, account=account
        )
    if limit == 0:
        return _device_limit_reached(sit, account, 0, "device calling not allowed for this account")
    if device_count is None:
        return Need.DEVICE_COUNT
    if isinstance(device_count, StoreFailure):
        if device_count.refused:
            return None
        return sit.reject(
            500, f"device count failed: {device_count.detail}", x_reason=REASON_LIMIT_CHECK, account=account
        )
    if device_count > limit + 1:
        return _device_limit_reached(sit, account, limit, f"{device_count} devices, limit {limit}")
    return None


def _device_limit_reached(sit: Situation, account: Account, limit: int, cause: str) -> Decision:
    alert = DeviceLimitReached(
        **sit.envelope(),
        account_sid=account.account_sid,
        limit=limit,
        service_provider_sid=account.service_provider_sid,
    )
    return sit.reject(503, cause, reason=PHRASE_MAX_DEVICES, account=account, alerts=(alert,))


def challenge(sit: Situation, nonces: NonceSigner, *, stale: bool = False) -> Decision:
    """401 with `WWW-Authenticate: Digest realm=..., algorithm=MD5, qop="auth", nonce=...`."""
    realm = sit.request.aor_host or ""
    aor = sit.aor
    assert aor is not None  # screened
    nonce = nonces.issue(realm, sit.now_ms / 1000)
    value = f'Digest realm="{realm}", algorithm=MD5, qop="auth", nonce="{nonce}"'
    if stale:
        value += ", stale=true"
    challenged = RegisterChallenged(
        **sit.envelope(),
        aor=aor,
        realm=realm,
        nonce=nonce,
        stale=stale,
        source_ip=sit.request.source_ip,
        source_port=sit.request.source_port,
        call_id=sit.request.call_id,
    )
    return sit.answer(401, "Unauthorized", [("WWW-Authenticate", value)], challenged)


def check_credentials(sit: Situation, nonces: NonceSigner, account: Account) -> Decision | None:
    """401 without Authorization, 500 when it lacks a field, a stale 401 for a nonce not ours."""
    credentials = sit.request.authorization
    if credentials is None:
        return challenge(sit, nonces)
    missing = missing_fields(credentials)
    if missing:
        return sit.reject(
            500, f"Authorization lacks {', '.join(missing)}", x_reason=REASON_AUTHORIZATION, account=account
        )
    realm = sit.request.aor_host or ""
    if nonces.verify(credentials.nonce or "", realm, sit.now_ms / 1000) is NonceCheck.STALE:
        return challenge(sit, nonces, stale=True)
    return None


def judge_webhook(
    sit: Situation, account: Account, hook: RegistrationHook, verdict: WebhookVerdict
) -> Decision | Grant:
    """The webhook's verdict as SPEC 2.6 maps it; a Grant when the status is `ok`."""
    if verdict.failure in (WebhookFailure.UNREACHABLE, WebhookFailure.TIMEOUT, WebhookFailure.CIRCUIT_OPEN):
        # An open circuit is answered as the failures that opened it were (and alerted alike), without a call.
        failed = _webhook_failed(sit, account, hook, None)
        cause = f"webhook {verdict.failure.value}"
        return sit.reject(500, cause, x_reason=cause, account=account, alerts=(failed,))
    if verdict.failure is WebhookFailure.BUSY:
        # This account's calls are at their bound: the phone is told to come back, as a shed REGISTER is.
        cause = "webhook busy: the account's concurrent calls are at their limit"
        headers = [(X_REASON, "webhook busy"), ("Retry-After", str(BUSY_RETRY_AFTER_S))]
        return sit.reject(503, cause, x_reason="webhook busy", headers=headers, account=account)
    if verdict.failure is WebhookFailure.NOT_JSON:
        return sit.reject(
            500, "webhook answered 200 without a JSON object", x_reason="webhook answered without JSON", account=account
        )
    status = verdict.http_status
    if status != 200:
        failed = _webhook_failed(sit, account, hook, status)
        cause = f"webhook answered HTTP {status}"
        if status is not None and is_relayable_failure(status):
            return sit.reject(status, cause, account=account, alerts=(failed,))
        return sit.reject(500, f"{cause}, not a SIP failure code", x_reason=cause, account=account, alerts=(failed,))
    body = verdict.body or {}
    result = body.get("status")
    if not isinstance(result, str):
        return sit.reject(500, "webhook JSON has no status", x_reason="webhook answer has no status", account=account)
    if result.lower() != "ok":
        if body.get("blacklist") is True:
            x_reason = f"detected potential spammer from {sit.request.source_ip}:{sit.request.source_port}"
        else:
            x_reason = REASON_INVALID_CREDENTIALS
        headers = merge_headers([(X_REASON, x_reason)], body.get("headers"))
        return sit.reject(403, f"webhook status {result!r}", x_reason=x_reason, headers=headers, account=account)
    return grant_from_webhook(body)


def _webhook_failed(sit: Situation, account: Account, hook: RegistrationHook, status: int | None) -> Event:
    return WebhookFailed(
        **sit.envelope(),
        account_sid=account.account_sid,
        url=loggable_url(hook.url),  # no user:password@ or query on a stream
        status=status,
        service_provider_sid=account.service_provider_sid,
    )


def judge_client(
    sit: Situation, account: Account, client: Client | Absent | StoreFailure, passwords: ClientPasswordCipher
) -> Decision | Grant:
    """The `clients` table check (SPEC 2.7): active client and a matching digest response."""
    if isinstance(client, StoreFailure):
        return sit.reject(
            500, f"client lookup failed: {client.detail}", x_reason="Client lookup failed", account=account
        )

    def invalid(cause: str) -> Decision:
        return sit.reject(403, cause, x_reason=REASON_INVALID_CREDENTIALS, account=account)

    if client is NOT_FOUND:
        return invalid("no such client")
    assert isinstance(client, Client)
    if not client.is_active:
        return invalid("client is not active")
    if not client.password:
        return invalid("client has no password")
    try:
        password = passwords.decrypt(client.password)
    except ClientPasswordError as exc:
        return sit.reject(500, str(exc), x_reason="Client password unreadable", account=account)
    credentials = sit.request.authorization
    if credentials is None or not verify_response(credentials, password):
        return invalid("digest response does not match")
    return Grant(
        allow_direct_app_calling=client.allow_direct_app_calling,
        allow_direct_queue_calling=client.allow_direct_queue_calling,
        allow_direct_user_calling=client.allow_direct_user_calling,
    )


def accept(sit: Situation, account: Account | None, grant: Grant) -> Decision:
    """The binding and its 200 (SPEC 2.8), or the removal and its 200 (SPEC 2.9)."""
    request = sit.request
    aor = sit.aor
    assert aor is not None and request.contact is not None and request.expires is not None  # screened
    account_sid = account.account_sid if account is not None else None
    if sit.is_unregister:
        removed = RegistrationRemoved(
            **sit.envelope(),
            aor=aor,
            account_sid=account_sid,
            username=sit.username,
            source_ip=request.source_ip,
            source_port=request.source_port,
            call_id=request.call_id,
        )
        return sit.answer(200, "OK", [("Contact", request.contact), ("Expires", "0")], removed)
    granted_s = grant.expires_s or request.expires
    advertised_s = min(NAT_EXPIRES_S, granted_s) if request.transport.lower() == "udp" else granted_s
    granted = RegistrationGranted(
        **sit.envelope(),
        aor=aor,
        contact=request.contact_uri or request.contact,
        sbc_address=request.sbc_address,
        private_sbc_address=request.private_sbc_address,
        protocol=sip_protocol(request.via_transport),
        proxy=sit.proxy,
        call_hook=grant.call_hook,
        call_status_hook=grant.call_status_hook,
        allow_direct_app_calling=grant.allow_direct_app_calling,
        allow_direct_queue_calling=grant.allow_direct_queue_calling,
        allow_direct_user_calling=grant.allow_direct_user_calling,
        granted_expires_s=granted_s,
        advertised_expires_s=advertised_s,
        expiry_time_ms=sit.now_ms + granted_s * 1000,
        account_sid=account_sid,
        username=sit.username,
        source_ip=request.source_ip,
        source_port=request.source_port,
        call_id=request.call_id,
    )
    contact = rewrite_contact_expires(request.contact, advertised_s)
    headers = [("Contact", contact), ("Expires", str(advertised_s))]
    return sit.answer(200, "OK", headers, granted)


def check_block(sit: Situation, state: ThrottleState) -> Decision | None:
    """403 without a lookup, a webhook call or a fact while the source IP or the AOR is blocked."""
    if state.blocked() is None:
        return None
    answered = sit.answer(403, "Forbidden", [(X_REASON, REASON_BLOCKED)])
    return Decision(facts=(), reply=answered.reply, throttled=True)


def refused_credentials(judged: Decision, verdict: WebhookVerdict | None) -> bool:
    """Whether a judged REGISTER is a failed authentication the throttle counts (throttle.py says which).

    The webhook's 403 counts only as its verdict on a 200 (`status` not ok); an HTTP error of the webhook
    relayed as 403 says nothing about the phone's password. The `clients` table refuses only with 403.
    """
    if judged.status != 403:
        return False
    return verdict is None or verdict.http_status == 200


def count_refused(
    sit: Situation, judged: Decision, policy: ThrottlePolicy, state: ThrottleState, account: Account
) -> Decision:
    """The refusal with its failure counted, and a `BlockStarted` for each block it starts (before the refusal,
    which stays the fact that answers the request)."""
    aor = sit.aor
    assert aor is not None  # screened
    counted = count_failure(policy, state, sit.request.source_ip, aor, sit.now_ms)
    started = tuple(
        BlockStarted(
            **sit.envelope(),
            subject_kind=block.subject.value,
            subject=block.value,
            failures=block.failures,
            window_s=policy.window_s,
            block_s=block.duration_s,
            until_ms=block.until_ms,
            strike=block.strike,
            aor=aor,
            account_sid=account.account_sid,
            service_provider_sid=account.service_provider_sid,
            source_ip=sit.request.source_ip,
            source_port=sit.request.source_port,
            call_id=sit.request.call_id,
        )
        for block in counted.blocks
    )
    return Decision(facts=started + judged.facts, reply=judged.reply, writes=counted.writes)


# --- the whole chain ---------------------------------------------------------------------


def decide(
    request: RegisterReceived,
    facts: Facts,
    policy: RegistrarPolicy,
    *,
    now_ms: int,
    causation_id: str | None,
) -> Decision | Need:
    """The answer to a REGISTER given the facts so far, or the next fact needed."""
    sit = Situation(request, now_ms, causation_id)
    early = screen(sit) or check_cache(sit, facts.binding)
    if early is not None:
        return early
    throttle, state = policy.throttle, facts.throttle
    if throttle is not None and state is not None:
        blocked = check_block(sit, state)
        if blocked is not None:
            return blocked
    account = check_account(sit, facts.account, policy.hosting)
    if not isinstance(account, Account):
        return account
    if policy.hosting and not sit.is_unregister:
        limited = check_device_limit(sit, account, facts.capacities, facts.device_count)
        if limited is not None:
            return limited
    challenged = check_credentials(sit, policy.nonces, account)
    if challenged is not None:
        return challenged
    judged: Decision | Grant
    if account.registration_hook is not None:
        if facts.verdict is None:
            return Need.WEBHOOK
        judged = judge_webhook(sit, account, account.registration_hook, facts.verdict)
    else:
        if facts.client is None:
            return Need.CLIENT
        judged = judge_client(sit, account, facts.client, policy.passwords)
    if isinstance(judged, Decision):
        if throttle is not None and state is not None and refused_credentials(judged, facts.verdict):
            return count_refused(sit, judged, throttle, state, account)
        return judged
    accepted = accept(sit, account, judged)
    if throttle is not None and state is not None:
        forget = success_writes(throttle, state, sit.request.source_ip, sit.aor or "")
        if forget:
            return Decision(facts=accepted.facts, reply=accepted.reply, writes=forget)
    return accepted
