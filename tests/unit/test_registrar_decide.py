"""The registrar's decide(): every row of SPEC 2.10, the cache, NAT and protocol rules, and the envelope."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import (
    DeviceLimitReached,
    DigestCredentials,
    Event,
    RegisterChallenged,
    RegisterReceived,
    RegisterRejected,
    RegistrationGranted,
    RegistrationRefreshed,
    RegistrationRemoved,
    ReplyIssued,
    WebhookFailed,
    default_codec,
)
from processors.registrar.client_password import ClientPasswordCipher
from processors.registrar.decide import (
    Decision,
    Need,
    RegistrarPolicy,
    decide,
    rewrite_contact_expires,
    sip_protocol,
)
from processors.registrar.digest import compute_response
from processors.registrar.facts import (
    NOT_FOUND,
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
from processors.registrar.nonce import NonceSigner
from projections.history import aor_of

NOW_MS = 1_700_000_000_000
NOW_S = NOW_MS // 1000
SECRET = "foobarbazzle"
ENTRY_ID = "1700000000000-7"
CORRELATION = "corr-42"
REALM = "jambonz.org"
SOURCE_IP, SOURCE_PORT = "203.0.113.5", 5062
PROXY = f"sip:{SOURCE_IP}:{SOURCE_PORT}"
CONTACT = f'<sip:john@{SOURCE_IP}:{SOURCE_PORT};transport=udp>;expires=3600;+sip.instance="x"'
CONTACT_URI = f"sip:john@{SOURCE_IP}:{SOURCE_PORT};transport=udp"
PASSWORD = "s3cr3t-pw"

NONCES = NonceSigner(SECRET, 300)
CIPHER = ClientPasswordCipher(SECRET)
POLICY = RegistrarPolicy(hosting=False, nonces=NONCES, passwords=CIPHER)
HOSTED = dataclasses.replace(POLICY, hosting=True)

HOOK_PASSWORD = "hook-pass-9f1"
HOOK = RegistrationHook(
    url="http://127.0.0.1:4000/auth", method="POST", username="foo", password=HOOK_PASSWORD
)
ACCOUNT = Account(
    account_sid="acc-1",
    is_active=True,
    webhook_secret="sig-secret-77",
    service_provider_sid="sp-1",
    sip_realm=REALM,
    device_to_call_ratio=0,
    registration_hook=HOOK,
)
CLIENT_ACCOUNT = dataclasses.replace(ACCOUNT, registration_hook=None)
CAPACITIES = (Capacity("voice_call_session", 20), Capacity("device", 2))  # limit 0*20 + 2 = 2
OK = WebhookVerdict(http_status=200, body={"status": "ok", "expires": 45})


def credentials(
    nonce: str | None = None, password: str = PASSWORD, **overrides: str | None
) -> DigestCredentials:
    nonce = nonce if nonce is not None else NONCES.issue(REALM, NOW_S)
    fields: dict[str, str | None] = {
        "username": "john",
        "realm": REALM,
        "nonce": nonce,
        "uri": f"sip:{REALM}",
        "qop": "auth",
        "nc": "00000001",
        "cnonce": "6b8b4567",
    }
    fields.update(overrides)
    fields["response"] = overrides.get(
        "response",
        compute_response(
            username=fields["username"] or "",
            realm=fields["realm"] or "",
            password=password,
            method="REGISTER",
            uri=fields["uri"] or "",
            nonce=fields["nonce"] or "",
            qop=fields["qop"],
            nc=fields["nc"],
            cnonce=fields["cnonce"],
        ),
    )
    return DigestCredentials(**fields)  # type: ignore[arg-type]


def register(**overrides: object) -> RegisterReceived:
    fields: dict[str, object] = {
        "event_id": "evt-1",
        "occurred_at": datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
        "correlation_id": CORRELATION,
        "reply_to": "ingest-a",
        "call_id": "call-1@phone",
        "cseq": 2,
        "source_ip": SOURCE_IP,
        "source_port": SOURCE_PORT,
        "transport": "udp",
        "via_transport": "udp",
        "sbc_address": "udp/198.51.100.1:5060,tcp/198.51.100.1:5060",
        "private_sbc_address": "10.0.0.1:5060",
        "request_uri": f"sip:{REALM}",
        "request_uri_host": REALM,
        "to_uri": f"sip:john@{REALM}",
        "aor_user": "john",
        "aor_host": REALM,
        "contact": CONTACT,
        "contact_uri": CONTACT_URI,
        "expires": 3600,
        "authorization": credentials(),
        "headers": {"user-agent": "phone/1.0"},
    }
    fields.update(overrides)
    return RegisterReceived(**fields)  # type: ignore[arg-type]


def run(
    request: RegisterReceived, facts: Facts, policy: RegistrarPolicy = POLICY, now_ms: int = NOW_MS
) -> Decision:
    step = decide(request, facts, policy, now_ms=now_ms, causation_id=ENTRY_ID)
    assert isinstance(step, Decision), f"decide asked for {step}"
    return step


def webhook_facts(verdict: WebhookVerdict = OK, **overrides: object) -> Facts:
    return Facts(account=ACCOUNT, verdict=verdict, **overrides)  # type: ignore[arg-type]


def challenge_header(stale: bool = False) -> str:
    nonce = NONCES.issue(REALM, NOW_S)
    value = f'Digest realm="{REALM}", algorithm=MD5, qop="auth", nonce="{nonce}"'
    return value + ", stale=true" if stale else value


CACHED = StoredBinding(proxy=PROXY, expiry_time_ms=NOW_MS + 31_000)
SPAMMER = f"detected potential spammer from {SOURCE_IP}:{SOURCE_PORT}"

# (id, request, facts, policy, status, reason phrase, reply headers, fact event types)
UDP_CONTACT_30 = ("Contact", CONTACT.replace("expires=3600", "expires=30"))
# fmt: off
SPEC_2_10 = [
    ("request-uri-ipv4", register(request_uri="sip:192.169.1.1", request_uri_host="192.169.1.1"), Facts(),
     POLICY, 403, "Forbidden", [], [RegisterRejected]),
    ("request-uri-unparseable", register(request_uri_host=None, contact=None), Facts(),
     POLICY, 403, "Forbidden", [], [RegisterRejected]),
    ("no-contact", register(contact=None, contact_uri=None), Facts(),
     POLICY, 400, "Bad Request", [("X-Reason", "Contact header is required for REGISTER requests")],
     [RegisterRejected]),
    ("no-expires", register(expires=None), Facts(),
     POLICY, 400, "Bad Request", [], [RegisterRejected]),
    ("to-uri-unparseable", register(aor_user=None, aor_host=None), Facts(),
     POLICY, 403, "Forbidden", [("X-Reason", "Invalid address of record")], [RegisterRejected]),
    ("cached-binding", register(authorization=None), Facts(binding=CACHED),
     POLICY, 200, "OK", [UDP_CONTACT_30, ("Expires", "30")], [RegistrationRefreshed]),
    ("account-deactivated", register(), Facts(account=dataclasses.replace(ACCOUNT, is_active=False)),
     POLICY, 403, "Forbidden", [("X-Reason", "Account has been deactivated")], [RegisterRejected]),
    ("unknown-realm-hosted", register(), Facts(account=NOT_FOUND),
     HOSTED, 403, "Forbidden", [], [RegisterRejected]),
    ("unknown-realm-not-hosted-no-401", register(authorization=None), Facts(account=NOT_FOUND),
     POLICY, 403, "Forbidden", [("X-Reason", "Unknown or invalid realm")], [RegisterRejected]),
    ("device-limit-zero", register(), Facts(account=ACCOUNT, capacities=(Capacity("voice_call_session", 5),)),
     HOSTED, 503, "Max Devices Registered", [], [DeviceLimitReached, RegisterRejected]),
    ("device-limit-exceeded", register(), Facts(account=ACCOUNT, capacities=CAPACITIES, device_count=4),
     HOSTED, 503, "Max Devices Registered", [], [DeviceLimitReached, RegisterRejected]),
    ("db-error-in-limits", register(),
     Facts(account=ACCOUNT, capacities=StoreFailure(refused=False, detail="MySQL error 1146")),
     HOSTED, 500, "Server Internal Error", [("X-Reason", "Device limit check failed")], [RegisterRejected]),
    ("db-refused-in-limits-passes", register(),
     Facts(account=ACCOUNT, capacities=StoreFailure(refused=True, detail="MySQL error 2003"), verdict=OK),
     HOSTED, 200, "OK", [UDP_CONTACT_30, ("Expires", "30")], [RegistrationGranted]),
    ("no-authorization", register(authorization=None), Facts(account=ACCOUNT),
     POLICY, 401, "Unauthorized", [("WWW-Authenticate", challenge_header())], [RegisterChallenged]),
    ("malformed-authorization", register(authorization=DigestCredentials(username="john", realm=REALM)),
     Facts(account=ACCOUNT), POLICY, 500, "Server Internal Error", [("X-Reason", "Malformed Authorization header")],
     [RegisterRejected]),
    ("webhook-404-relayed", register(), webhook_facts(WebhookVerdict(http_status=404)),
     POLICY, 404, "Not Found", [], [WebhookFailed, RegisterRejected]),
    ("webhook-503-relayed", register(), webhook_facts(WebhookVerdict(http_status=503)),
     POLICY, 503, "Service Unavailable", [], [WebhookFailed, RegisterRejected]),
    ("webhook-unreachable", register(), webhook_facts(WebhookVerdict(failure=WebhookFailure.UNREACHABLE)),
     POLICY, 500, "Server Internal Error", [("X-Reason", "webhook unreachable")], [WebhookFailed, RegisterRejected]),
    ("webhook-timeout", register(), webhook_facts(WebhookVerdict(failure=WebhookFailure.TIMEOUT)),
     POLICY, 500, "Server Internal Error", [("X-Reason", "webhook timeout")], [WebhookFailed, RegisterRejected]),
    ("webhook-circuit-open", register(), webhook_facts(WebhookVerdict(failure=WebhookFailure.CIRCUIT_OPEN)),
     POLICY, 500, "Server Internal Error", [("X-Reason", "webhook circuit-open")], [WebhookFailed, RegisterRejected]),
    ("webhook-busy", register(), webhook_facts(WebhookVerdict(failure=WebhookFailure.BUSY)),
     POLICY, 503, "Service Unavailable", [("X-Reason", "webhook busy"), ("Retry-After", "5")], [RegisterRejected]),
    ("webhook-not-json", register(),
     webhook_facts(WebhookVerdict(http_status=200, failure=WebhookFailure.NOT_JSON)),
     POLICY, 500, "Server Internal Error", [("X-Reason", "webhook answered without JSON")], [RegisterRejected]),
    ("webhook-json-without-status", register(), webhook_facts(WebhookVerdict(http_status=200, body={"x": 1})),
     POLICY, 500, "Server Internal Error", [("X-Reason", "webhook answer has no status")], [RegisterRejected]),
    ("auth-failed", register(),
     webhook_facts(WebhookVerdict(http_status=200, body={"status": "fail", "msg": "no"})),
     POLICY, 403, "Forbidden", [("X-Reason", "Invalid credentials")], [RegisterRejected]),
    ("auth-failed-spammer", register(),
     webhook_facts(WebhookVerdict(http_status=200, body={"status": "FAIL", "blacklist": True})),
     POLICY, 403, "Forbidden", [("X-Reason", SPAMMER)], [RegisterRejected]),
    ("auth-failed-webhook-headers", register(),
     webhook_facts(WebhookVerdict(http_status=200, body={"status": "fail", "headers": {"X-Retry": "later"}})),
     POLICY, 403, "Forbidden", [("X-Reason", "Invalid credentials"), ("X-Retry", "later")],
     [RegisterRejected]),
    ("success", register(), webhook_facts(),
     POLICY, 200, "OK", [UDP_CONTACT_30, ("Expires", "30")], [RegistrationGranted]),
    ("unregister-success", register(expires=0, contact="*", contact_uri="*"), webhook_facts(),
     POLICY, 200, "OK", [("Contact", "*"), ("Expires", "0")], [RegistrationRemoved]),
]
# fmt: on


@pytest.mark.parametrize(
    ("request_", "facts", "policy", "status", "reason", "headers", "fact_types"),
    [pytest.param(*row[1:], id=row[0]) for row in SPEC_2_10],
)
def test_spec_2_10_answers(
    request_: RegisterReceived,
    facts: Facts,
    policy: RegistrarPolicy,
    status: int,
    reason: str,
    headers: list[tuple[str, str]],
    fact_types: list[type[Event]],
) -> None:
    decision = run(request_, facts, policy)
    assert (decision.reply.status, decision.reply.reason) == (status, reason)
    assert decision.reply.headers == headers
    assert [type(fact) for fact in decision.facts] == fact_types
    for fact in decision.facts:
        if isinstance(fact, RegisterRejected):
            assert (fact.status, fact.reason) == (status, reason)
            assert fact.x_reason == dict(headers).get("X-Reason")


def test_every_event_carries_the_correlation_and_the_causing_entry() -> None:
    for _, request_, facts, policy, *_ in SPEC_2_10:
        decision = run(request_, facts, policy)
        for event in (*decision.facts, decision.reply):
            assert event.correlation_id == CORRELATION
            assert event.causation_id == ENTRY_ID
            assert event.occurred_at.timestamp() == NOW_S
        assert isinstance(decision.reply, ReplyIssued)


def test_events_round_trip_and_hold_no_secret() -> None:
    codec = default_codec()
    client_password = CIPHER.encrypt(PASSWORD)
    for _, request_, facts, policy, *_ in SPEC_2_10:
        decision = run(request_, facts, policy)
        for event in decision.facts:
            encoded = codec.encode(event)
            assert codec.decode(encoded) == event
            data = encoded[b"data"]
            for secret in (HOOK_PASSWORD, "sig-secret-77", PASSWORD, client_password):
                assert secret.encode() not in data
            creds = request_.authorization
            if creds is not None and creds.response:
                assert creds.response.encode() not in data


def test_expected_401_nonce_is_one_we_issued() -> None:
    decision = run(register(authorization=None), Facts(account=ACCOUNT))
    challenged = decision.facts[0]
    assert isinstance(challenged, RegisterChallenged)
    assert not challenged.stale and challenged.realm == REALM and challenged.aor == f"john@{REALM}"
    assert f'nonce="{challenged.nonce}"' in dict(decision.reply.headers)["WWW-Authenticate"]
    assert NONCES.verify(challenged.nonce, REALM, NOW_S).value == "ok"


# --- the chain asks for facts in jambonz's order ------------------------------------------


def test_needs_come_in_middleware_order_hosted() -> None:
    request_ = register()
    facts = Facts()
    asked = []
    supply = {
        Need.ACCOUNT: {"account": ACCOUNT},
        Need.CAPACITIES: {"capacities": CAPACITIES},
        Need.DEVICE_COUNT: {"device_count": 3},  # limit 2, +1 slack: 3 passes
        Need.WEBHOOK: {"verdict": OK},
    }
    while True:
        step = decide(request_, facts, HOSTED, now_ms=NOW_MS, causation_id=ENTRY_ID)
        if isinstance(step, Decision):
            break
        asked.append(step)
        facts = dataclasses.replace(facts, **supply[step])  # type: ignore[arg-type]
    assert asked == [Need.ACCOUNT, Need.CAPACITIES, Need.DEVICE_COUNT, Need.WEBHOOK]
    assert step.status == 200


def test_not_hosted_and_unregister_skip_the_device_limit() -> None:
    assert (
        decide(register(), Facts(account=ACCOUNT), POLICY, now_ms=NOW_MS, causation_id=None) is Need.WEBHOOK
    )
    unregister = register(expires=0)
    assert (
        decide(unregister, Facts(account=ACCOUNT), HOSTED, now_ms=NOW_MS, causation_id=None) is Need.WEBHOOK
    )


def test_device_limit_zero_does_not_count_devices() -> None:
    facts = Facts(account=ACCOUNT, capacities=(Capacity("voice_call_session", 20),))
    decision = run(register(), facts, HOSTED)
    alert = decision.facts[0]
    assert isinstance(alert, DeviceLimitReached)
    assert (alert.account_sid, alert.limit, alert.service_provider_sid) == ("acc-1", 0, "sp-1")


def test_device_limit_is_calls_times_ratio_plus_devices_with_one_slack() -> None:
    account = dataclasses.replace(ACCOUNT, device_to_call_ratio=5)
    capacities = (Capacity("voice_call_session", 2), Capacity("device", 3))  # 2*5 + 3 = 13
    at_slack = run(
        register(), Facts(account=account, capacities=capacities, device_count=14, verdict=OK), HOSTED
    )
    assert at_slack.status == 200
    over = run(register(), Facts(account=account, capacities=capacities, device_count=15), HOSTED)
    assert over.status == 503
    alert = over.facts[0]
    assert isinstance(alert, DeviceLimitReached) and alert.limit == 13


def test_missing_voice_call_session_is_500() -> None:
    decision = run(register(), Facts(account=ACCOUNT, capacities=(Capacity("device", 5),)), HOSTED)
    assert decision.status == 500


def test_account_lookup_errors() -> None:
    failed = run(register(), Facts(account=StoreFailure(refused=False, detail="timeout")))
    assert failed.status == 500
    # jambonz passes ECONNREFUSED through without an account: "Unknown or invalid realm", hosted too.
    refused = run(register(), Facts(account=StoreFailure(refused=True, detail="2003")), HOSTED)
    assert refused.status == 403
    assert refused.reply.headers == [("X-Reason", "Unknown or invalid realm")]


def test_device_count_failure() -> None:
    base = Facts(account=ACCOUNT, capacities=CAPACITIES)
    refused = dataclasses.replace(base, device_count=StoreFailure(refused=True, detail="redis"), verdict=OK)
    assert run(register(), refused, HOSTED).status == 200
    failed = dataclasses.replace(base, device_count=StoreFailure(refused=False, detail="redis"))
    assert run(register(), failed, HOSTED).status == 500


# --- the cache short-circuit (SPEC 2.3) --------------------------------------------------


@pytest.mark.parametrize(
    ("binding", "cached"),
    [
        pytest.param(
            StoredBinding(proxy=PROXY, expiry_time_ms=NOW_MS + 30_001), True, id="same-source-30.001s-left"
        ),
        pytest.param(
            StoredBinding(proxy=PROXY, expiry_time_ms=NOW_MS + 30_000), False, id="exactly-30s-left"
        ),
        pytest.param(StoredBinding(proxy=PROXY, expiry_time_ms=NOW_MS + 10_000), False, id="under-30s-left"),
        pytest.param(
            StoredBinding(proxy=f"sip:{SOURCE_IP}:5999", expiry_time_ms=NOW_MS + 600_000),
            False,
            id="other-port",
        ),
        pytest.param(
            StoredBinding(proxy="sip:198.51.100.9:5062", expiry_time_ms=NOW_MS + 600_000),
            False,
            id="other-ip",
        ),
        pytest.param(None, False, id="nothing-cached"),
    ],
)
def test_cache_rules(binding: StoredBinding | None, cached: bool) -> None:
    step = decide(
        register(authorization=None), Facts(binding=binding), POLICY, now_ms=NOW_MS, causation_id=None
    )
    if cached:
        assert isinstance(step, Decision) and step.status == 200
        refreshed = step.facts[0]
        assert isinstance(refreshed, RegistrationRefreshed)
        assert refreshed.expiry_time_ms == binding.expiry_time_ms  # type: ignore[union-attr]  # TTL not refreshed
        assert refreshed.advertised_expires_s == 30
    else:
        assert step is Need.ACCOUNT  # goes on to the full account, challenge and auth path


def test_cache_answers_30_over_tcp_too_and_skips_auth() -> None:
    request_ = register(transport="tcp", via_transport="tcp", authorization=None)
    decision = run(request_, Facts(binding=CACHED))
    assert decision.reply.headers[1] == ("Expires", "30")


def test_unregister_never_uses_the_cache() -> None:
    step = decide(register(expires=0), Facts(binding=CACHED), POLICY, now_ms=NOW_MS, causation_id=None)
    assert step is Need.ACCOUNT


# --- expiry, NAT and the record (SPEC 2.8) -----------------------------------------------


@pytest.mark.parametrize(
    ("transport", "granted", "advertised"),
    [("udp", 45, 30), ("udp", 20, 20), ("tcp", 45, 45), ("tls", 45, 45), ("ws", 45, 45), ("wss", 3600, 3600)],
)
def test_advertised_expires_is_capped_at_30_over_udp_only(
    transport: str, granted: int, advertised: int
) -> None:
    verdict = WebhookVerdict(http_status=200, body={"status": "ok", "expires": granted})
    decision = run(register(transport=transport, via_transport=transport), webhook_facts(verdict))
    granted_event = decision.facts[0]
    assert isinstance(granted_event, RegistrationGranted)
    assert granted_event.granted_expires_s == granted  # the Redis TTL
    assert granted_event.advertised_expires_s == advertised
    assert granted_event.expiry_time_ms == NOW_MS + granted * 1000
    assert decision.reply.headers == [
        ("Contact", CONTACT.replace("expires=3600", f"expires={advertised}")),
        ("Expires", str(advertised)),
    ]


def test_granted_expires_falls_back_to_requested() -> None:
    for body in ({"status": "ok"}, {"status": "ok", "expires": 0}, {"status": "ok", "expires": None}):
        decision = run(register(transport="tcp"), webhook_facts(WebhookVerdict(http_status=200, body=body)))
        granted = decision.facts[0]
        assert isinstance(granted, RegistrationGranted) and granted.granted_expires_s == 3600


def test_grant_is_not_clamped_to_the_request() -> None:
    verdict = WebhookVerdict(http_status=200, body={"status": "ok", "expires": 7200})
    granted = run(register(transport="tcp", expires=60), webhook_facts(verdict)).facts[0]
    assert isinstance(granted, RegistrationGranted) and granted.granted_expires_s == 7200


def test_binding_record_fields() -> None:
    body = {
        "status": "ok",
        "expires": 45,
        "call_hook": "https://example.com/call",
        "call_status_hook": {"url": "https://example.com/status", "method": "POST"},
        "allow_direct_user_calling": True,
    }
    decision = run(register(via_transport="wss", transport="wss"), webhook_facts(WebhookVerdict(200, body)))
    granted = decision.facts[0]
    assert isinstance(granted, RegistrationGranted)
    assert granted.aor == f"john@{REALM}"
    assert granted.contact == CONTACT_URI
    assert granted.sbc_address == "udp/198.51.100.1:5060,tcp/198.51.100.1:5060"
    assert granted.private_sbc_address == "10.0.0.1:5060"
    assert granted.protocol == "wss"
    assert granted.proxy == PROXY
    assert granted.call_hook == "https://example.com/call"
    assert granted.call_status_hook == {"url": "https://example.com/status", "method": "POST"}
    assert (granted.allow_direct_app_calling, granted.allow_direct_user_calling) == (False, True)
    assert (granted.account_sid, granted.username) == ("acc-1", "john")


def test_tls_is_recorded_as_tls() -> None:
    granted = run(register(transport="tls", via_transport="tls"), webhook_facts()).facts[0]
    assert isinstance(granted, RegistrationGranted) and granted.protocol == "tls"


@pytest.mark.parametrize(
    ("via", "protocol"),
    [
        ("udp", "udp"),
        ("UDP", "udp"),
        ("sip/2.0/tcp", "tcp"),
        ("ws", "ws"),
        ("wss", "wss"),
        ("tls", "tls"),
        ("sctp", None),
        (None, None),
    ],
)
def test_sip_protocol(via: str | None, protocol: str | None) -> None:
    assert sip_protocol(via) == protocol


@pytest.mark.parametrize(
    ("contact", "rewritten"),
    [
        ("<sip:a@h>;expires=3600", "<sip:a@h>;expires=30"),
        ("<sip:a@h;expires=10>;expires=3600", "<sip:a@h;expires=30>;expires=3600"),  # first, anywhere
        ("<sip:a@h>;Expires=3600", "<sip:a@h>;Expires=3600"),  # case-sensitive
        ("<sip:a@h>", "<sip:a@h>"),  # none: unchanged, nothing added
    ],
)
def test_contact_expires_rewrite(contact: str, rewritten: str) -> None:
    assert rewrite_contact_expires(contact, 30) == rewritten


def test_unregister_star_contact_verbatim() -> None:
    decision = run(register(expires=0, contact="*", contact_uri="*"), webhook_facts())
    assert decision.reply.headers == [("Contact", "*"), ("Expires", "0")]
    removed = decision.facts[0]
    assert isinstance(removed, RegistrationRemoved)
    assert (removed.aor, removed.account_sid, removed.username) == (f"john@{REALM}", "acc-1", "john")


def test_unregister_is_still_authenticated() -> None:
    unregister = register(expires=0, contact="*", contact_uri="*")
    unauthorized = register(expires=0, contact="*", contact_uri="*", authorization=None)
    assert run(unauthorized, Facts(account=ACCOUNT)).status == 401
    rejected = run(unregister, webhook_facts(WebhookVerdict(http_status=200, body={"status": "fail"})))
    assert rejected.status == 403
    deactivated = run(unregister, Facts(account=dataclasses.replace(ACCOUNT, is_active=False)))
    assert deactivated.status == 403


def test_aor_without_user_part_is_undefined_like_jambonz() -> None:
    granted = run(register(aor_user=None), webhook_facts()).facts[0]
    assert isinstance(granted, RegistrationGranted) and granted.aor == f"undefined@{REALM}"
    # the request's history step lands under the same AOR as its decision (it once read "None@<realm>")
    assert aor_of(register(aor_user=None)) == aor_of(granted) == f"undefined@{REALM}"


# --- nonces (deliberate change) ----------------------------------------------------------


@pytest.mark.parametrize(
    "nonce",
    [
        pytest.param("157590482938000", id="jambonz-style-unsigned"),
        pytest.param(NONCES.issue(REALM, NOW_S - 301), id="expired"),
        pytest.param(NONCES.issue("other.org", NOW_S), id="other-realm"),
        pytest.param(NonceSigner("another-secret").issue(REALM, NOW_S), id="other-key"),
    ],
)
def test_stale_nonce_gets_a_fresh_401_before_any_webhook(nonce: str) -> None:
    # verdict is not supplied: a stale nonce must be decided without asking for the webhook
    decision = run(register(authorization=credentials(nonce=nonce)), Facts(account=ACCOUNT))
    assert decision.status == 401
    assert decision.reply.headers == [("WWW-Authenticate", challenge_header(stale=True))]
    challenged = decision.facts[0]
    assert isinstance(challenged, RegisterChallenged) and challenged.stale


def test_fresh_nonce_goes_to_the_webhook() -> None:
    request_ = register(authorization=credentials(nonce=NONCES.issue(REALM, NOW_S - 299)))
    assert decide(request_, Facts(account=ACCOUNT), POLICY, now_ms=NOW_MS, causation_id=None) is Need.WEBHOOK


@pytest.mark.parametrize("field", ["username", "realm", "nonce", "uri", "response"])
def test_each_mandatory_authorization_field(field: str) -> None:
    creds = msgspec.structs.replace(credentials(), **{field: None})
    assert run(register(authorization=creds), Facts(account=ACCOUNT)).status == 500
    empty = msgspec.structs.replace(credentials(), **{field: ""})
    assert run(register(authorization=empty), Facts(account=ACCOUNT)).status == 500


# --- webhook verdicts (SPEC 2.6) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("http_status", "sip_status"),
    [(404, 404), (403, 403), (302, 302), (202, 500), (201, 500), (299, 500), (999, 500), (418, 500)],
)
def test_non_200_is_relayed_only_as_a_known_sip_failure(http_status: int, sip_status: int) -> None:
    decision = run(register(), webhook_facts(WebhookVerdict(http_status=http_status)))
    assert decision.status == sip_status
    failed = decision.facts[0]
    assert isinstance(failed, WebhookFailed)
    assert (failed.status, failed.url, failed.account_sid) == (http_status, HOOK.url, "acc-1")


def test_unreachable_webhook_alert_has_no_status() -> None:
    failed = run(register(), webhook_facts(WebhookVerdict(failure=WebhookFailure.UNREACHABLE))).facts[0]
    assert (
        isinstance(failed, WebhookFailed) and failed.status is None and failed.service_provider_sid == "sp-1"
    )


@pytest.mark.parametrize("status", ["ok", "OK", "Ok"])
def test_status_ok_is_case_insensitive(status: str) -> None:
    assert (
        run(register(), webhook_facts(WebhookVerdict(http_status=200, body={"status": status}))).status == 200
    )


def test_status_that_is_not_a_string_is_500() -> None:
    assert run(register(), webhook_facts(WebhookVerdict(http_status=200, body={"status": 1}))).status == 500


def test_blacklist_must_be_true_not_truthy() -> None:
    body = {"status": "fail", "blacklist": "yes"}
    decision = run(register(), webhook_facts(WebhookVerdict(http_status=200, body=body)))
    assert decision.reply.headers == [("X-Reason", "Invalid credentials")]


def test_webhook_headers_merge_replaces_and_drops_unsafe() -> None:
    body = {
        "status": "fail",
        "headers": {
            "x-reason": "custom",
            "X-Count": 3,
            "Bad Name": "v",
            "X-Inject": "a\r\nVia: evil",
            "X-B": True,
        },
    }
    decision = run(register(), webhook_facts(WebhookVerdict(http_status=200, body=body)))
    assert decision.reply.headers == [("x-reason", "custom"), ("X-Count", "3")]


# --- clients table (SPEC 2.7) ------------------------------------------------------------

CLIENT = Client(
    client_sid="cl-1",
    is_active=True,
    password=CIPHER.encrypt(PASSWORD),
    allow_direct_app_calling=True,
    allow_direct_queue_calling=False,
    allow_direct_user_calling=True,
)


def test_client_table_needs_the_client() -> None:
    step = decide(register(), Facts(account=CLIENT_ACCOUNT), POLICY, now_ms=NOW_MS, causation_id=None)
    assert step is Need.CLIENT


def test_client_success_grants_its_flags() -> None:
    decision = run(register(transport="tcp"), Facts(account=CLIENT_ACCOUNT, client=CLIENT))
    assert decision.status == 200
    granted = decision.facts[0]
    assert isinstance(granted, RegistrationGranted)
    assert granted.granted_expires_s == 3600 and granted.call_hook is None
    assert (
        granted.allow_direct_app_calling,
        granted.allow_direct_queue_calling,
        granted.allow_direct_user_calling,
    ) == (True, False, True)


@pytest.mark.parametrize(
    ("client", "authorization", "status"),
    [
        pytest.param(CLIENT, credentials(password="wrong"), 403, id="wrong-password"),
        pytest.param(dataclasses.replace(CLIENT, is_active=False), credentials(), 403, id="inactive"),
        pytest.param(NOT_FOUND, credentials(), 403, id="unknown-user"),
        pytest.param(
            dataclasses.replace(CLIENT, password='{"iv":"zz","content":"00"}'),
            credentials(),
            500,
            id="undecryptable",
        ),
        pytest.param(StoreFailure(refused=False, detail="x"), credentials(), 500, id="lookup-failed"),
    ],
)
def test_client_failures(client: object, authorization: DigestCredentials, status: int) -> None:
    decision = run(register(authorization=authorization), Facts(account=CLIENT_ACCOUNT, client=client))  # type: ignore[arg-type]
    assert decision.status == status
    if status == 403:
        assert decision.reply.headers == [("X-Reason", "Invalid credentials")]


def test_client_digest_uses_the_authorization_realm() -> None:
    creds = credentials(realm="other.realm")  # response computed over the client's own realm
    assert run(register(authorization=creds), Facts(account=CLIENT_ACCOUNT, client=CLIENT)).status == 200


# --- robustness: any combination of facts gives a decision or a need, never an error -----

_verdicts = st.one_of(
    st.none(),
    st.builds(
        WebhookVerdict,
        http_status=st.one_of(st.none(), st.integers(100, 999)),
        body=st.one_of(
            st.none(),
            st.dictionaries(
                st.sampled_from(["status", "expires", "blacklist", "headers", "call_hook"]),
                st.one_of(
                    st.none(),
                    st.booleans(),
                    st.integers(-5, 99999),
                    st.text(max_size=5),
                    st.dictionaries(st.text(max_size=4), st.text(max_size=4)),
                ),
            ),
        ),
        failure=st.one_of(st.none(), st.sampled_from(WebhookFailure)),
    ),
)
_failures = st.builds(StoreFailure, refused=st.booleans(), detail=st.just("x"))


@settings(max_examples=300, deadline=None)
@given(
    expires=st.one_of(st.none(), st.integers(-1, 100_000)),
    transport=st.sampled_from(["udp", "tcp", "tls", "ws", "wss"]),
    hosting=st.booleans(),
    account=st.one_of(
        st.none(),
        st.just(NOT_FOUND),
        _failures,
        st.just(ACCOUNT),
        st.just(CLIENT_ACCOUNT),
        st.just(dataclasses.replace(ACCOUNT, is_active=False)),
    ),
    capacities=st.one_of(
        st.none(),
        _failures,
        st.lists(
            st.builds(
                Capacity, st.sampled_from(["voice_call_session", "device", "api_rate"]), st.integers(0, 50)
            ),
            max_size=3,
        ).map(tuple),
    ),
    device_count=st.one_of(st.none(), _failures, st.integers(0, 200)),
    verdict=_verdicts,
    client=st.one_of(st.none(), st.just(NOT_FOUND), _failures, st.just(CLIENT)),
    binding=st.one_of(
        st.none(),
        st.builds(
            StoredBinding,
            proxy=st.sampled_from([PROXY, "sip:1.1.1.1:1", None]),
            expiry_time_ms=st.one_of(st.none(), st.integers(NOW_MS - 10**6, NOW_MS + 10**6)),
        ),
    ),
    authorized=st.booleans(),
)
def test_decide_is_total(
    expires: int | None,
    transport: str,
    hosting: bool,
    account: object,
    capacities: object,
    device_count: object,
    verdict: WebhookVerdict | None,
    client: object,
    binding: StoredBinding | None,
    authorized: bool,
) -> None:
    request_ = register(
        expires=expires, transport=transport, authorization=credentials() if authorized else None
    )
    facts = Facts(
        binding=binding,
        account=account,
        capacities=capacities,
        device_count=device_count,  # type: ignore[arg-type]
        verdict=verdict,
        client=client,
    )
    policy = HOSTED if hosting else POLICY
    step = decide(request_, facts, policy, now_ms=NOW_MS, causation_id=ENTRY_ID)
    if isinstance(step, Need):
        return
    assert 200 <= step.status <= 699
    assert re.fullmatch(r"[\w /-]+", step.reply.reason)
    assert all(event.correlation_id == CORRELATION for event in (*step.facts, step.reply))
    if step.status == 200:
        assert len(step.facts) == 1
    else:
        assert step.facts and isinstance(step.facts[-1], RegisterRejected | RegisterChallenged)
