"""The registrar's I/O shell: gathers the facts `decide()` asks for and returns Outcomes.

A BatchHandler for the consumer group `registrar` on the `requests` stream. Per batch it reads
every cached binding the batch needs with ONE `MGET` of `user:<aor>` keys, then decides the
REGISTERs concurrently. Each decision becomes one Outcome: its facts for the `registrations`
stream and its ReplyIssued for `replies:<reply_to>`, committed by the consumer loop with the
XACK. Entries of other types (OPTIONS, outbound responses) get an empty Outcome.

Faults (Redis unreadable for the batch read, a bug) come back as the delivery's exception,
so the loop retries the entry; MySQL and webhook trouble are facts with SPEC answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiomysql
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from events import (
    RegisterChallenged,
    RegisterReceived,
    RegistrationRefreshed,
    StreamNames,
    user_key,
)
from events.streams import ACTIVE_USER_KEY
from processors.registrar.accounts import DEFAULT_CACHE_TTL_S, AccountStore
from processors.registrar.client_password import ClientPasswordCipher
from processors.registrar.decide import Decision, Need, RegistrarPolicy, decide
from processors.registrar.facts import NOT_FOUND, Account, Facts, StoreFailure, parse_stored_binding
from processors.registrar.lookup_cache import TtlCache
from processors.registrar.nonce import NonceSigner
from processors.registrar.webhook import WebhookCall, call_webhook, webhook_payload
from runtime.errors import StoreUnavailable
from runtime.handling import Delivery, Outcome
from runtime.webclient import HttpClient

if TYPE_CHECKING:
    from runtime.settings import Settings

log = logging.getLogger(__name__)

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
    streams: StreamNames = StreamNames()  # the partition this registrar consumes and writes

    @classmethod
    def from_settings(cls, settings: Settings, partition: int = 0) -> RegistrarConfig:
        refresh_ttl_s = settings.mysql.refresh_ttl_s
        return cls(
            encryption_secret=settings.encryption_secret.reveal(),
            hosting=settings.hosting,
            legacy_crypto=settings.legacy_crypto,
            nonce_ttl_s=settings.nonce_ttl_s,
            webhook_timeout_s=settings.webhook_timeout_s,
            http_user_agent=settings.http_user_agent,
            account_cache_ttl_s=refresh_ttl_s if refresh_ttl_s is not None else DEFAULT_CACHE_TTL_S,
            streams=StreamNames(settings.eventlog.cluster_id, partition),
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
        )
        self._accounts = AccountStore(
            mysql_pool, cache_ttl_s=config.account_cache_ttl_s, query_timeout_s=config.store_timeout_s
        )
        # TTL 0: nothing is kept, but concurrent REGISTERs of one realm share one ZSCAN.
        self._device_counts: TtlCache[str, int | StoreFailure] = TtlCache(0)

    async def handle(self, deliveries: Sequence[Delivery]) -> Sequence[Outcome | BaseException]:
        results: list[Outcome | BaseException] = [Outcome() for _ in deliveries]
        registers = [(i, d) for i, d in enumerate(deliveries) if isinstance(d.event, RegisterReceived)]
        if not registers:
            return results
        requests = [d.event for _, d in registers if isinstance(d.event, RegisterReceived)]
        try:
            bindings = await self._cached_bindings(requests)
        except StoreUnavailable as exc:
            for i, _ in registers:
                results[i] = exc
            return results
        if len(registers) == 1:  # the usual batch at moderate load: no task needed
            try:
                decided: list[Outcome | BaseException] = [await self._handle_one(registers[0][1], bindings)]
            except Exception as exc:  # noqa: BLE001 - as gather(return_exceptions=True) would
                decided = [exc]
        else:
            decided = await asyncio.gather(
                *(self._handle_one(d, bindings) for _, d in registers), return_exceptions=True
            )
        for (i, _), result in zip(registers, decided, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            results[i] = result
        return results

    async def _cached_bindings(self, requests: Sequence[RegisterReceived]) -> dict[str, bytes | str]:
        """One MGET for every `user:<aor>` the batch may answer from the cache."""
        aors = sorted({aor for r in requests if (aor := cached_binding_aor(r)) is not None})
        if not aors:
            return {}
        try:
            async with asyncio.timeout(self._config.store_timeout_s):
                values = await self._mget([user_key(aor) for aor in aors])
        except (RedisError, TimeoutError) as exc:
            raise StoreUnavailable(f"reading cached bindings failed: {type(exc).__name__}") from exc
        return {aor: value for aor, value in zip(aors, values, strict=True) if value is not None}

    async def _handle_one(self, delivery: Delivery, bindings: dict[str, bytes | str]) -> Outcome:
        request = delivery.event
        assert isinstance(request, RegisterReceived)
        aor = cached_binding_aor(request)
        facts = Facts(binding=parse_stored_binding(bindings.get(aor)) if aor else None)
        for _ in range(_MAX_STEPS):
            now_ms = int(self._clock() * 1000)
            step = decide(request, facts, self._policy, now_ms=now_ms, causation_id=delivery.entry_id)
            if isinstance(step, Decision):
                self._log_decision(request, step)
                return self._outcome(request, step)
            facts = await self._gather(step, request, facts, now_ms)
        raise RuntimeError("decide() kept asking for facts it was given")

    def _outcome(self, request: RegisterReceived, decision: Decision) -> Outcome:
        streams = self._config.streams
        appends = [(streams.registrations, fact) for fact in decision.facts]
        appends.append((streams.replies(request.reply_to), decision.reply))
        return Outcome(appends=appends)

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
            verdict = await call_webhook(
                self._http,
                WebhookCall.of(hook, account.webhook_secret),
                webhook_payload(request, hook.method),
                timeout_s=self._config.webhook_timeout_s,
                user_agent=self._config.http_user_agent,
                clock=self._clock,
            )
            return facts.having(verdict=verdict)
        username = request.authorization.username if request.authorization else None
        try:
            client = await self._accounts.client(account.account_sid, username or "")
        except StoreUnavailable as exc:
            return facts.having(client=_failure(exc))
        return facts.having(client=client if client is not None else NOT_FOUND)

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
        except (RedisError, TimeoutError) as exc:
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


def _failure(exc: StoreUnavailable) -> StoreFailure:
    return StoreFailure(refused=bool(getattr(exc, "refused", False)), detail=str(exc))
