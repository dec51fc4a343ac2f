"""The registrar's I/O shell: gathers the facts `decide()` asks for and returns Outcomes.

A ConcurrentHandler for the consumer group `processors` on the `requests` stream. For the
deliveries it may begin it reads every cached binding they need with ONE `MGET` of `user:<aor>`
keys and decides at once whatever needs nothing more (challenges, cached refreshes, answers from a
cached account); a decision that waits on MySQL or a webhook comes back as an awaitable, so it
never holds up another request. Each decision becomes one Outcome: its facts for the
`registrations` stream and its ReplyIssued for `replies:<reply_to>`, committed by the consumer
loop with the XACK as soon as it is decided.

A request read after its deadline (`deadline_ms`: nobody waits for the answer any more) is not
challenged, checked or granted: it becomes a `RequestExpired`. Webhook calls go through a
per-account gate (`tenants.WebhookGate`): a bound on concurrent calls and a circuit breaker.

Faults (Redis unreadable for the batch read, a bug) come back as the delivery's exception,
so the loop retries the entry; MySQL and webhook trouble are facts with SPEC answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiomysql
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from events import (
    DigestCredentials,
    Event,
    RegisterChallenged,
    RegisterReceived,
    RegistrationRefreshed,
    RequestExpired,
    RequestSummary,
    StreamNames,
    new_event_id,
    user_key,
)
from events.streams import ACTIVE_USER_KEY, partition_names, partition_of
from processors.registrar.accounts import DEFAULT_CACHE_TTL_S, AccountStore
from processors.registrar.client_password import ClientPasswordCipher
from processors.registrar.decide import Decision, Need, RegistrarPolicy, decide
from processors.registrar.facts import NOT_FOUND, Account, Facts, StoreFailure, parse_stored_binding
from processors.registrar.lookup_cache import Missing, TtlCache
from processors.registrar.nonce import NonceSigner
from processors.registrar.tenants import WebhookGate
from processors.registrar.throttle import ThrottlePolicy, ThrottleState, ThrottleStats, throttle_policy
from processors.registrar.webhook import WebhookCall, call_webhook, webhook_payload
from runtime.errors import StoreUnavailable
from runtime.faults import REDIS_FAULTS
from runtime.handling import Delivery, Outcome, Step
from runtime.sealed import Sealer, SealError
from runtime.webclient import HttpClient

if TYPE_CHECKING:
    from runtime.settings import Settings

log = logging.getLogger(__name__)

_FAULTS: tuple[type[BaseException], ...] = (*REDIS_FAULTS, TimeoutError)

_GLOB_SPECIALS = str.maketrans({c: f"\\{c}" for c in "\\*?[]^"})


@dataclass(frozen=True, slots=True)
class RegistrarConfig:
    """What the registrar needs from the settings."""

    encryption_secret: str = field(repr=False)  # ENCRYPTION_SECRET, else JWT_SECRET
    hosting: bool = False  # JAMBONES_HOSTING
    legacy_crypto: bool = False  # LEGACY_CRYPTO: AES-256-CTR instead of CBC
    nonce_ttl_s: int = 300  # SIDECAR_NONCE_TTL_S
    webhook_timeout_s: float = 5.0  # SIDECAR_WEBHOOK_TIMEOUT_S
    http_user_agent: str | None = None  # JAMBONES_HTTP_USER_AGENT_HEADER
    account_cache_ttl_s: float = DEFAULT_CACHE_TTL_S  # JAMBONES_MYSQL_REFRESH_TTL, else 5 s
    store_timeout_s: float = 5.0  # deadline of each MySQL query and Redis read
    webhook_max_concurrency: int = 400  # SIDECAR_WEBHOOK_MAX_CONCURRENCY, per account
    webhook_breaker_failures: int = 5  # SIDECAR_WEBHOOK_BREAKER_FAILURES (0: no breaker)
    webhook_breaker_open_s: float = 30.0  # SIDECAR_WEBHOOK_BREAKER_OPEN_S
    # Partition 0: the reply streams and the throttle's keys (an IP's failures count across every AOR it tries).
    streams: StreamNames = StreamNames()
    partitions: int = 1  # SIDECAR_PARTITIONS: an AOR's facts go to the partition of its requests
    throttle: ThrottlePolicy | None = None  # SIDECAR_AUTH_*: brute-force throttling (None: off)

    def facts_streams(self, aor: str | None) -> StreamNames:
        """The partition an AOR's facts go to: the one its requests came from (`partition_of`, as ingest chose)."""
        if self.partitions <= 1:
            return self.streams
        return partition_names(self.streams.cluster_id, self.partitions)[partition_of(aor or "", self.partitions)]

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistrarConfig:
        refresh_ttl_s = settings.mysql.refresh_ttl_s
        return cls(
            encryption_secret=settings.encryption_secret.reveal(),
            hosting=settings.hosting,
            legacy_crypto=settings.legacy_crypto,
            nonce_ttl_s=settings.nonce_ttl_s,
            webhook_timeout_s=settings.webhook_timeout_s,
            http_user_agent=settings.http_user_agent,
            account_cache_ttl_s=refresh_ttl_s if refresh_ttl_s is not None else DEFAULT_CACHE_TTL_S,
            webhook_max_concurrency=settings.webhook_max_concurrency,
            webhook_breaker_failures=settings.webhook_breaker_failures,
            webhook_breaker_open_s=settings.webhook_breaker_open_s,
            streams=StreamNames(settings.eventlog.cluster_id),
            partitions=settings.eventlog.partitions,
            throttle=throttle_policy(settings, StreamNames(settings.eventlog.cluster_id)),
        )


def cached_binding_aor(request: RegisterReceived) -> str | None:
    """The AOR whose cached binding the cache short-circuit may read; None if it cannot apply."""
    if not request.expires or request.contact is None or not request.aor_host:
        return None
    return request.aor


_MAX_STEPS = len(Need) + 1  # each Need is asked at most once, then a Decision


class Registrar:
    """Decides REGISTER requests (SPEC 2); see the module docstring."""

    def __init__(
        self,
        config: RegistrarConfig,
        redis: aioredis.Redis,
        mysql_pool: aiomysql.Pool,
        http: HttpClient,
        clock: Callable[[], float] = time.time,
        mget: Callable[[list[str]], Awaitable[list[Any]]] | None = None,
    ) -> None:
        self._config = config
        self._redis = redis
        self._mget = mget or redis.mget  # the event log's lean link when given
        self._http = http
        self._clock = clock
        self._policy = RegistrarPolicy(
            hosting=config.hosting,
            nonces=NonceSigner(config.encryption_secret, config.nonce_ttl_s),
            passwords=ClientPasswordCipher(config.encryption_secret, legacy_crypto=config.legacy_crypto),
            throttle=config.throttle,
        )
        self.throttle_stats = ThrottleStats()
        self._accounts = AccountStore(
            mysql_pool, cache_ttl_s=config.account_cache_ttl_s, query_timeout_s=config.store_timeout_s
        )
        # TTL 0: nothing is kept, but concurrent REGISTERs of one realm share one ZSCAN.
        self._device_counts: TtlCache[str, int | StoreFailure] = TtlCache(0)
        self._sealer = Sealer(config.encryption_secret)
        self._unsealable_logged_at = -60.0
        self._webhooks = WebhookGate(
            max_concurrency=config.webhook_max_concurrency,
            breaker_failures=config.webhook_breaker_failures,
            open_s=config.webhook_breaker_open_s,
        )

    def metrics(self) -> dict[str, float]:
        return {**self._webhooks.metrics(), **self.throttle_stats.metrics()}

    def order_key(self, event: Event) -> str | None:
        """REGISTERs of one AOR are decided in arrival order (a refresh reads the binding its predecessor wrote)."""
        if isinstance(event, RegisterReceived):
            return event.aor or event.call_id
        return None

    async def begin(self, deliveries: Sequence[Delivery]) -> list[Step]:
        """Decides at once what needs no I/O beyond one MGET of cached bindings (challenges, cached refreshes,
        cached accounts); the rest comes back as an awaitable that gathers its facts (MySQL, webhook)."""
        now_ms = int(self._clock() * 1000)
        steps: list[Step] = []
        live: list[tuple[int, Delivery, RegisterReceived]] = []
        for delivery in deliveries:
            request = delivery.event
            if not isinstance(request, RegisterReceived):
                steps.append(Outcome())  # not the registrar's (an OPTIONS left on `requests` by an older ingest)
                continue
            if request.sealed_authorization is not None:
                request = self._opened(request)
            if request.deadline_ms is not None and now_ms >= request.deadline_ms:
                steps.append(self._expired(request, delivery, now_ms))
                continue
            live.append((len(steps), delivery, request))
            steps.append(Outcome())
        if not live:
            return steps
        throttle = self._policy.throttle
        throttle_keys = [
            throttle.keys(request.source_ip, request.aor) if throttle is not None and request.aor is not None else ()
            for _, _, request in live
        ]
        try:
            stored = await self._batch_read([request for _, _, request in live], throttle_keys)
        except StoreUnavailable as exc:
            for i, _, _ in live:
                steps[i] = exc
            return steps
        for (i, delivery, request), keys in zip(live, throttle_keys, strict=True):
            steps[i] = self._first_step(delivery, request, stored, keys)
        return steps

    def _opened(self, request: RegisterReceived) -> RegisterReceived:
        """The request with its Authorization fields opened (in this process only; never stored so).

        Sealed with another ENCRYPTION_SECRET (a cluster configured with two), they cannot be read: the
        REGISTER is then decided as one without credentials, and said so once a minute in the log.
        """
        try:
            credentials = _credentials.decode(self._sealer.open(request.sealed_authorization or ""))
        except (SealError, msgspec.DecodeError, msgspec.ValidationError):
            now = time.monotonic()
            if now >= self._unsealable_logged_at + 60:
                self._unsealable_logged_at = now
                log.error(
                    "credentials of a REGISTER do not open with this ENCRYPTION_SECRET call_id=%s", request.call_id
                )
            credentials = None
        return msgspec.structs.replace(request, authorization=credentials, sealed_authorization=None)

    async def handle(self, deliveries: Sequence[Delivery]) -> Sequence[Outcome | BaseException]:
        """The whole batch decided (for callers that want every outcome at once)."""
        steps = await self.begin(deliveries)
        pending = [(i, step) for i, step in enumerate(steps) if not isinstance(step, Outcome | BaseException)]
        results: list[Outcome | BaseException] = [
            s if isinstance(s, Outcome | BaseException) else Outcome() for s in steps
        ]
        if pending:
            finished = await asyncio.gather(*(step for _, step in pending), return_exceptions=True)
            for (i, _), result in zip(pending, finished, strict=True):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                results[i] = result
        return results

    async def _batch_read(
        self, requests: Sequence[RegisterReceived], throttle_keys: Sequence[tuple[str, ...]]
    ) -> dict[str, bytes | str]:
        """One MGET for every `user:<aor>` the batch may answer from the cache and every throttle key
        (failures, strikes, blocks of each source IP and AOR); key → value of those present."""
        keys = {user_key(aor) for r in requests if (aor := cached_binding_aor(r)) is not None}
        keys.update(key for request_keys in throttle_keys for key in request_keys)
        if not keys:
            return {}
        ordered = list(keys)
        try:
            async with asyncio.timeout(self._config.store_timeout_s):
                values = await self._mget(ordered)
        except _FAULTS as exc:
            raise StoreUnavailable(f"reading cached bindings failed: {type(exc).__name__}") from exc
        return {key: value for key, value in zip(ordered, values, strict=True) if value is not None}

    def _first_step(
        self,
        delivery: Delivery,
        request: RegisterReceived,
        stored: dict[str, bytes | str],
        throttle_keys: tuple[str, ...],
    ) -> Step:
        aor = cached_binding_aor(request)
        facts = Facts(binding=parse_stored_binding(stored.get(user_key(aor))) if aor else None)
        if throttle_keys:
            facts = facts.having(throttle=ThrottleState.of([stored.get(key) for key in throttle_keys]))
        now_ms = int(self._clock() * 1000)
        step = decide(request, facts, self._policy, now_ms=now_ms, causation_id=delivery.entry_id)
        if step is Need.ACCOUNT:  # usually cached: decided without a task
            cached = self._accounts.cached_account(request.aor_host or "")
            if not isinstance(cached, Missing):
                facts = facts.having(account=cached if cached is not None else NOT_FOUND)
                step = decide(request, facts, self._policy, now_ms=now_ms, causation_id=delivery.entry_id)
        if isinstance(step, Decision):
            return self._decided(delivery, request, step, now_ms)
        return self._decide_with_io(delivery, request, facts, step)

    async def _decide_with_io(self, delivery: Delivery, request: RegisterReceived, facts: Facts, need: Need) -> Outcome:
        for _ in range(_MAX_STEPS):
            facts = await self._gather(need, request, facts, int(self._clock() * 1000))
            now_ms = int(self._clock() * 1000)
            step = decide(request, facts, self._policy, now_ms=now_ms, causation_id=delivery.entry_id)
            if isinstance(step, Decision):
                return self._decided(delivery, request, step, now_ms)
            need = step
        raise RuntimeError("decide() kept asking for facts it was given")

    def _decided(self, delivery: Delivery, request: RegisterReceived, decision: Decision, now_ms: int) -> Outcome:
        """The outcome of a decision, unless it came too late: the ingest has answered (500) and the phone has moved
        on, so granting now would store a binding nobody was told about (also after the batch's own Redis read)."""
        if request.deadline_ms is not None and now_ms >= request.deadline_ms:
            return self._expired(request, delivery, now_ms)
        self._log_decision(request, decision)
        return self._outcome(request, decision)

    def _expired(self, request: RegisterReceived, delivery: Delivery, now_ms: int) -> Outcome:
        deadline_ms = request.deadline_ms or now_ms
        fact = RequestExpired(
            event_id=new_event_id(),
            occurred_at=datetime.fromtimestamp(now_ms / 1000, UTC),
            correlation_id=request.correlation_id,
            causation_id=delivery.entry_id,
            request_type=request.TYPE,
            aor=request.aor,
            deadline_ms=deadline_ms,
            late_ms=now_ms - deadline_ms,
            source_ip=request.source_ip,
            source_port=request.source_port,
            call_id=request.call_id,
            request=request_summary(request),
        )
        log.info(
            "request expired before it was decided aor=%s late_ms=%d call_id=%s",
            request.aor,
            fact.late_ms,
            request.call_id,
        )
        return Outcome(appends=[(self._config.facts_streams(request.aor).registrations, fact)])

    def _outcome(self, request: RegisterReceived, decision: Decision) -> Outcome:
        """The decision's facts (the answering one carrying the request's summary, for the history) and reply.

        A cached refresh changes nothing stored: its fact goes to the `refreshes` work queue, which the
        history folds into a run and which is trimmed once read, so refreshes do not grow the log.
        """
        streams = self._config.facts_streams(request.aor)
        facts = list(decision.facts)
        if facts:
            facts[-1] = _answering(facts[-1], request)
        appends = [
            (streams.refreshes if isinstance(fact, RegistrationRefreshed) else streams.registrations, fact)
            for fact in facts
        ]
        appends.append((self._config.streams.replies(request.reply_to), decision.reply))
        self.throttle_stats.count(decision)
        return Outcome(appends=appends, writes=list(decision.writes))

    async def _gather(self, need: Need, request: RegisterReceived, facts: Facts, now_ms: int) -> Facts:
        realm = request.aor_host or ""
        account = facts.account if isinstance(facts.account, Account) else None
        if need is Need.ACCOUNT:
            try:
                found = await self._accounts.account_by_realm(realm)
            except StoreUnavailable as exc:
                return facts.having(account=_failure(exc))
            return facts.having(account=found if found is not None else NOT_FOUND)
        if account is None:
            raise RuntimeError(f"decide() asked for {need.value} before the account")
        if need is Need.CAPACITIES:
            try:
                capacities = await self._accounts.capacities(account.account_sid)
            except StoreUnavailable as exc:
                return facts.having(capacities=_failure(exc))
            return facts.having(capacities=capacities)
        if need is Need.DEVICE_COUNT:
            count = await self._device_counts.get(realm, lambda: self._count_devices(realm, now_ms))
            return facts.having(device_count=count)
        if need is Need.WEBHOOK:
            hook = account.registration_hook
            if hook is None:
                raise RuntimeError("decide() asked for a webhook verdict without a hook")
            call = WebhookCall.of(hook, account.webhook_secret)
            verdict = await self._webhooks.call(
                account.account_sid,
                lambda: call_webhook(
                    self._http,
                    call,
                    webhook_payload(request, hook.method),
                    timeout_s=self._config.webhook_timeout_s,
                    user_agent=self._config.http_user_agent,
                    clock=self._clock,
                ),
                max_wait_s=self._time_left_s(request, now_ms),
            )
            return facts.having(verdict=verdict)
        username = request.authorization.username if request.authorization else None
        try:
            client = await self._accounts.client(account.account_sid, username or "")
        except StoreUnavailable as exc:
            return facts.having(client=_failure(exc))
        return facts.having(client=client if client is not None else NOT_FOUND)

    def _time_left_s(self, request: RegisterReceived, now_ms: int) -> float:
        """How long a request may wait for a webhook slot: until its deadline (the webhook's timeout without one)."""
        if request.deadline_ms is None:
            return self._config.webhook_timeout_s
        return max(0.0, (request.deadline_ms - now_ms) / 1000)

    async def _count_devices(self, realm: str, now_ms: int) -> int | StoreFailure:
        """Distinct user parts of live `active-user` members ending with the realm (SPEC 2.4)."""
        users: set[str] = set()
        try:
            async with asyncio.timeout(self._config.store_timeout_s):
                await self._redis.zremrangebyscore(ACTIVE_USER_KEY, 0, now_ms)
                match = f"*{realm.translate(_GLOB_SPECIALS)}"
                async for member, _score in self._redis.zscan_iter(ACTIVE_USER_KEY, match=match, count=100):
                    text = member.decode() if isinstance(member, bytes) else str(member)
                    users.add(text.removeprefix("user:").partition("@")[0])
        except RedisConnectionError as exc:
            return StoreFailure(refused=True, detail=f"Redis: {type(exc).__name__}")
        except _FAULTS as exc:
            return StoreFailure(refused=False, detail=f"Redis: {type(exc).__name__}")
        return len(users)

    @staticmethod
    def _log_decision(request: RegisterReceived, decision: Decision) -> None:
        if not log.isEnabledFor(logging.INFO):  # (DEBUG on implies INFO on)
            return
        routine = all(isinstance(f, RegisterChallenged | RegistrationRefreshed) for f in decision.facts)
        level = logging.DEBUG if routine else logging.INFO
        if not log.isEnabledFor(level):
            return
        kinds = ",".join(type(fact).TYPE for fact in decision.facts)
        log.log(
            level,
            "register decided status=%s facts=%s to=%s@%s source=%s:%s transport=%s call_id=%s",
            decision.status,
            kinds,
            request.aor_user,
            request.aor_host,
            request.source_ip,
            request.source_port,
            request.transport,
            request.call_id,
        )


_credentials = msgspec.json.Decoder(DigestCredentials)


def request_summary(request: RegisterReceived) -> RequestSummary:
    credentials = request.authorization
    return RequestSummary(
        at=request.occurred_at.isoformat(),
        transport=request.transport,
        expires=request.expires,
        credentials=credentials is not None,
        username=credentials.username if credentials is not None else None,
        user_agent=request.user_agent,
        sbc=request.reply_to,
        sbc_address=request.sbc_address,
    )


def _answering(fact: Event, request: RegisterReceived) -> Event:
    """The fact that answers the request, with the request's summary (facts without the field unchanged)."""
    if "request" not in fact.__struct_fields__:
        return fact
    return msgspec.structs.replace(fact, request=request_summary(request))  # type: ignore[type-var]


def _failure(exc: StoreUnavailable) -> StoreFailure:
    return StoreFailure(refused=bool(getattr(exc, "refused", False)), detail=str(exc))
