"""Brute-force throttling in decide(): what counts as a failure, when a block starts, what a block answers."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from events import BlockStarted, RegisterRejected, RegistrationGranted, default_codec
from processors.registrar.decide import Decision, Need, decide
from processors.registrar.facts import NOT_FOUND, Client, Facts, StoredBinding, WebhookFailure, WebhookVerdict
from processors.registrar.throttle import (
    REASON_BLOCKED,
    BlockRecord,
    SubjectState,
    ThrottlePolicy,
    ThrottleState,
    parse_block,
)
from tests.unit.test_registrar_decide import (
    ACCOUNT,
    CIPHER,
    CLIENT_ACCOUNT,
    ENTRY_ID,
    NOW_MS,
    OK,
    PASSWORD,
    POLICY,
    PROXY,
    REALM,
    SOURCE_IP,
    credentials,
    register,
    run,
)

THROTTLE = ThrottlePolicy()
THROTTLED = dataclasses.replace(POLICY, throttle=THROTTLE)
AOR = f"john@{REALM}"
FAIL = WebhookVerdict(http_status=200, body={"status": "fail"})
CLEAN = ThrottleState()
BLOCK = BlockRecord(until_ms=NOW_MS + 60_000, started_ms=NOW_MS - 1000, strike=1, failures=10)
NAMES = THROTTLE.names
AOR_COUNTER = NAMES.auth_failures("aor", AOR)
IP_COUNTER = NAMES.auth_failures("ip", SOURCE_IP)


NO_STATE = SubjectState()


def state(ip: SubjectState = NO_STATE, aor: SubjectState = NO_STATE) -> ThrottleState:
    return ThrottleState(ip=ip, aor=aor)


def webhook(verdict: WebhookVerdict, throttle: ThrottleState = CLEAN) -> Decision:
    return run(register(), Facts(account=ACCOUNT, verdict=verdict, throttle=throttle), THROTTLED)


def counted(subject_counter: str) -> list[tuple[object, ...]]:
    return [("SET", subject_counter, 0, "EX", THROTTLE.window_s, "NX"), ("INCR", subject_counter)]


@pytest.mark.parametrize(
    "throttle",
    [state(aor=SubjectState(block=BLOCK)), state(ip=SubjectState(block=BLOCK))],
    ids=["aor-blocked", "ip-blocked"],
)
@pytest.mark.parametrize("authorization", [credentials(), None], ids=["with-credentials", "without"])
def test_a_blocked_request_gets_403_before_any_lookup_and_records_nothing(
    throttle: ThrottleState, authorization: object
) -> None:
    decision = run(register(authorization=authorization), Facts(throttle=throttle), THROTTLED)
    assert decision.status == 403
    assert decision.reply.headers == [("X-Reason", REASON_BLOCKED)]
    assert decision.facts == () and decision.writes == ()
    assert decision.throttled


def test_a_cached_refresh_from_the_bound_source_passes_a_block() -> None:
    # An attacker guessing a registered phone's password must not unregister the phone.
    binding = StoredBinding(proxy=PROXY, expiry_time_ms=NOW_MS + 60_000)
    throttle = state(aor=SubjectState(block=BLOCK))
    decision = run(register(authorization=None), Facts(binding=binding, throttle=throttle), THROTTLED)
    assert decision.status == 200 and not decision.throttled


def test_without_the_state_or_the_policy_nothing_is_throttled() -> None:
    blocked = state(aor=SubjectState(block=BLOCK))
    assert decide(register(), Facts(throttle=blocked), POLICY, now_ms=NOW_MS, causation_id=ENTRY_ID) is Need.ACCOUNT
    assert decide(register(), Facts(), THROTTLED, now_ms=NOW_MS, causation_id=ENTRY_ID) is Need.ACCOUNT
    assert run(register(), Facts(account=ACCOUNT, verdict=FAIL), THROTTLED).writes == ()


def test_a_refused_password_is_counted_against_the_aor_and_the_source() -> None:
    decision = webhook(FAIL)
    assert decision.status == 403
    assert [type(f) for f in decision.facts] == [RegisterRejected]
    assert list(decision.writes) == counted(AOR_COUNTER) + counted(IP_COUNTER)


def test_the_failure_that_reaches_the_aor_limit_starts_a_block() -> None:
    decision = webhook(FAIL, state(aor=SubjectState(failures=9), ip=SubjectState(failures=9)))
    assert decision.status == 403 and decision.reply.headers == [("X-Reason", "Invalid credentials")]
    assert [type(f) for f in decision.facts] == [BlockStarted, RegisterRejected]  # the refusal answers, last
    started = decision.facts[0]
    assert isinstance(started, BlockStarted)
    assert (started.subject_kind, started.subject, started.failures, started.strike) == ("aor", AOR, 10, 1)
    assert (started.block_s, started.until_ms, started.window_s) == (300, NOW_MS + 300_000, 60)
    assert (started.aor, started.account_sid, started.source_ip) == (AOR, ACCOUNT.account_sid, SOURCE_IP)
    block_key, strikes_key = NAMES.auth_block("aor", AOR), NAMES.auth_strikes("aor", AOR)
    aor_writes = list(decision.writes[:4])
    assert aor_writes[0][:2] == ("SET", block_key) and aor_writes[0][3:] == ("PX", 300_000)
    record = msgspec.json.decode(aor_writes[0][2], type=BlockRecord)  # type: ignore[arg-type]
    assert record == BlockRecord(until_ms=NOW_MS + 300_000, started_ms=NOW_MS, strike=1, failures=10)
    assert aor_writes[1:] == [("DEL", AOR_COUNTER), ("INCR", strikes_key), ("EXPIRE", strikes_key, 86_400)]
    assert list(decision.writes[4:]) == counted(IP_COUNTER)  # the source is at 10 of 30


def test_the_source_is_blocked_at_its_own_limit() -> None:
    decision = webhook(FAIL, state(ip=SubjectState(failures=29, strikes=2)))
    started = [f for f in decision.facts if isinstance(f, BlockStarted)]
    assert [(b.subject_kind, b.subject, b.strike, b.block_s) for b in started] == [("ip", SOURCE_IP, 3, 1200)]


@pytest.mark.parametrize(
    ("strike", "block_s"), [(1, 300), (2, 600), (3, 1200), (9, 76_800), (10, 86_400), (99, 86_400)]
)
def test_each_block_in_a_row_lasts_twice_as_long_up_to_the_maximum(strike: int, block_s: int) -> None:
    assert THROTTLE.block_duration_s(strike) == block_s


@pytest.mark.parametrize(
    "verdict",
    [
        WebhookVerdict(http_status=403),  # the webhook's own HTTP error, relayed: not the phone's password
        WebhookVerdict(http_status=401),
        WebhookVerdict(failure=WebhookFailure.TIMEOUT),
        WebhookVerdict(failure=WebhookFailure.UNREACHABLE),
        WebhookVerdict(failure=WebhookFailure.BUSY),
        WebhookVerdict(http_status=200, body={"nothing": 1}),
    ],
    ids=["http-403", "http-401", "timeout", "unreachable", "busy", "no-status"],
)
def test_webhook_faults_are_not_counted(verdict: WebhookVerdict) -> None:
    decision = webhook(verdict, state(aor=SubjectState(failures=9), ip=SubjectState(failures=29)))
    assert decision.writes == ()
    assert not any(isinstance(f, BlockStarted) for f in decision.facts)


def test_the_blacklist_verdict_counts() -> None:
    decision = webhook(WebhookVerdict(http_status=200, body={"status": "fail", "blacklist": True}))
    assert list(decision.writes) == counted(AOR_COUNTER) + counted(IP_COUNTER)


def test_challenges_and_stale_nonces_are_not_counted() -> None:
    facts = Facts(account=ACCOUNT, throttle=state(aor=SubjectState(failures=9)))
    challenged = run(register(authorization=None), facts, THROTTLED)
    stale = run(register(authorization=credentials(nonce="not-ours")), facts, THROTTLED)
    assert (challenged.status, stale.status) == (401, 401)
    assert challenged.writes == () and stale.writes == ()


def _client(password: str = PASSWORD) -> Client:
    return Client(client_sid="c-1", is_active=True, password=CIPHER.encrypt(password))


@pytest.mark.parametrize(
    "client",
    [_client("another-password"), NOT_FOUND, dataclasses.replace(_client(), is_active=False)],
    ids=["wrong-password", "no-such-client", "inactive"],
)
def test_the_clients_table_refusals_count(client: object) -> None:
    facts = Facts(account=CLIENT_ACCOUNT, client=client, throttle=CLEAN)  # type: ignore[arg-type]
    decision = run(register(), facts, THROTTLED)
    assert decision.status == 403
    assert list(decision.writes) == counted(AOR_COUNTER) + counted(IP_COUNTER)


def test_a_successful_login_forgets_the_failures_and_strikes() -> None:
    throttle = state(aor=SubjectState(failures=4, strikes=1), ip=SubjectState(failures=7, strikes=2))
    decision = webhook(OK, throttle)
    assert decision.status == 200 and [type(f) for f in decision.facts] == [RegistrationGranted]
    # The source IP's strikes stay: one good account behind an address does not vouch for its other guesses.
    assert list(decision.writes) == [("DEL", AOR_COUNTER, NAMES.auth_strikes("aor", AOR), IP_COUNTER)]


def test_a_successful_login_with_nothing_to_forget_writes_nothing() -> None:
    assert webhook(OK).writes == ()


def test_state_is_read_from_the_keys_in_order() -> None:
    keys = THROTTLE.keys(SOURCE_IP, AOR)
    assert keys == (
        IP_COUNTER,
        NAMES.auth_strikes("ip", SOURCE_IP),
        NAMES.auth_block("ip", SOURCE_IP),
        AOR_COUNTER,
        NAMES.auth_strikes("aor", AOR),
        NAMES.auth_block("aor", AOR),
    )
    raw_block = msgspec.json.encode(BLOCK)
    read = ThrottleState.of([b"3", None, None, "12", b"1", raw_block])
    assert read == state(ip=SubjectState(failures=3), aor=SubjectState(failures=12, strikes=1, block=BLOCK))
    assert ThrottleState.of([b"x", b"-4", None, None, None, None]) == CLEAN
    assert parse_block(b"not json") is not None  # an unreadable block still blocks until its key expires


def test_block_started_round_trips_through_the_codec() -> None:
    started = webhook(FAIL, state(aor=SubjectState(failures=9))).facts[0]
    codec = default_codec()
    assert codec.decode(codec.encode(started)) == started


def test_a_block_start_is_an_influxdb_alert() -> None:
    from projections.alerts import line_of

    started = webhook(FAIL, state(aor=SubjectState(failures=9))).facts[0]
    line = line_of(started)
    assert line is not None and line.startswith("alerts,alert_type=sip-auth-blocked,account_sid=acc-1,")
    assert f'message="aor {AOR} blocked for 300 s after 10 failed authentications within 60 s' in line
