"""The registrar's MySQL lookups against real MariaDB (own database per test), its lookup cache, and
the Registrar shell end to end against real MariaDB, Redis (test DB) and an aiohttp webhook."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import aiomysql
import pytest
from aiohttp import web
from redis.asyncio import Redis

from events import (
    DeviceLimitReached,
    DigestCredentials,
    OptionsReceived,
    RegisterChallenged,
    RegisterReceived,
    RegistrationGranted,
    RegistrationRefreshed,
    ReplyIssued,
    StreamNames,
    user_key,
)
from events.streams import ACTIVE_USER_KEY
from processors.registrar import Registrar, RegistrarConfig
from processors.registrar.accounts import AccountStore, AccountStoreError, super_domain
from processors.registrar.client_password import ClientPasswordCipher
from processors.registrar.digest import compute_response
from processors.registrar.lookup_cache import LookupAbandoned, TtlCache
from processors.registrar.nonce import NonceSigner
from runtime.errors import StoreUnavailable
from runtime.handling import Delivery, Outcome
from runtime.webclient import HttpClient
from tests.conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER

ENCRYPTION_SECRET = "test-encryption-secret"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def pool(mysql_db: str) -> AsyncIterator[aiomysql.Pool]:
    db_pool = await aiomysql.create_pool(
        host=MYSQL_HOST,
        port=MYSQL_PORT,
        user=MYSQL_USER,
        password=MYSQL_PASSWORD,
        db=mysql_db,
        autocommit=True,
        minsize=1,
        maxsize=4,
    )
    try:
        yield db_pool
    finally:
        db_pool.close()
        await db_pool.wait_closed()


Execute = Callable[..., Awaitable[None]]


@pytest.fixture
def execute(pool: aiomysql.Pool) -> Execute:
    async def run(sql: str, *args: object) -> None:
        async with pool.acquire() as conn, conn.cursor() as cursor:
            await cursor.execute(sql, args)

    return run


def sid() -> str:
    return str(uuid.uuid4())


async def add_account(
    execute: Execute,
    realm: str,
    *,
    active: bool = True,
    hook_sid: str | None = None,
    ratio: int = 5,
    secret: str = "foobar",
) -> str:
    sp, account = sid(), sid()
    await execute("INSERT INTO service_providers (service_provider_sid, name) VALUES (%s, %s)", sp, f"sp-{sp}")
    await execute(
        "INSERT INTO accounts (account_sid, name, sip_realm, service_provider_sid, registration_hook_sid, "
        "is_active, webhook_secret, device_to_call_ratio) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        account,
        realm,
        realm,
        sp,
        hook_sid,
        active,
        secret,
        ratio,
    )
    return account


async def add_hook(
    execute: Execute, url: str, method: str = "POST", user: str | None = "foo", password: str | None = "bar"
) -> str:
    hook = sid()
    await execute(
        "INSERT INTO webhooks (webhook_sid, url, method, username, password) VALUES (%s, %s, %s, %s, %s)",
        hook,
        url,
        method,
        user,
        password,
    )
    return hook


async def add_products(
    execute: Execute, account: str, *, pending: bool = False, end: str | None = None, **quantities: int
) -> None:
    subscription = sid()
    await execute(
        "INSERT INTO account_subscriptions "
        "(account_subscription_sid, account_sid, pending, effective_end_date) VALUES (%s, %s, %s, %s)",
        subscription,
        account,
        pending,
        end,
    )
    for category, quantity in quantities.items():
        product = sid()
        await execute(
            "INSERT INTO products (product_sid, name, category) VALUES (%s, %s, %s)",
            product,
            category,
            category,
        )
        await execute(
            "INSERT INTO account_products (account_product_sid, account_subscription_sid, product_sid, "
            "quantity) VALUES (%s, %s, %s, %s)",
            sid(),
            subscription,
            product,
            quantity,
        )


async def add_client(
    execute: Execute,
    account: str,
    username: str,
    password: str,
    *,
    active: bool = True,
    direct_user: bool = True,
) -> str:
    client = sid()
    stored = ClientPasswordCipher(ENCRYPTION_SECRET).encrypt(password)
    await execute(
        "INSERT INTO clients (client_sid, account_sid, is_active, username, password, "
        "allow_direct_user_calling) VALUES (%s, %s, %s, %s, %s, %s)",
        client,
        account,
        active,
        username,
        stored,
        direct_user,
    )
    return client


# --- realm lookup -----------------------------------------------------------------------


async def test_account_by_realm_with_its_registration_hook(pool: aiomysql.Pool, execute: Execute) -> None:
    hook = await add_hook(execute, "http://127.0.0.1:4000/auth", "GET")
    account = await add_account(execute, "jambonz.org", hook_sid=hook, ratio=3)
    found = await AccountStore(pool).account_by_realm("jambonz.org")
    assert found is not None
    assert (found.account_sid, found.sip_realm, found.is_active, found.webhook_secret) == (
        account,
        "jambonz.org",
        True,
        "foobar",
    )
    assert found.device_to_call_ratio == 3 and found.service_provider_sid
    assert found.registration_hook is not None
    assert (found.registration_hook.url, found.registration_hook.method) == (
        "http://127.0.0.1:4000/auth",
        "GET",
    )
    assert (found.registration_hook.username, found.registration_hook.password) == ("foo", "bar")
    assert "bar" not in repr(found) and "foobar" not in repr(found)


async def test_hook_without_url_is_dropped(pool: aiomysql.Pool, execute: Execute) -> None:
    await add_account(execute, "nohook.org", hook_sid=sid())  # dangling hook sid: LEFT JOIN finds nothing
    empty = await add_hook(execute, "")
    await add_account(execute, "emptyhook.org", hook_sid=empty)
    store = AccountStore(pool)
    for realm in ("nohook.org", "emptyhook.org"):
        found = await store.account_by_realm(realm)
        assert found is not None and found.registration_hook is None


async def test_unknown_realm(pool: aiomysql.Pool, execute: Execute) -> None:
    await add_account(execute, "jambonz.org")
    store = AccountStore(pool)
    assert await store.account_by_realm("other.org") is None
    assert await store.account_by_realm("org") is None


async def test_deactivated_account_is_returned_inactive(pool: aiomysql.Pool, execute: Execute) -> None:
    await add_account(execute, "deactivated.jambonz.org", active=False)
    found = await AccountStore(pool).account_by_realm("deactivated.jambonz.org")
    assert found is not None and found.is_active is False


def test_super_domain() -> None:
    assert super_domain("foo.acme.example.com") == "acme.example.com"
    assert super_domain("acme.example.com") == "example.com"
    assert super_domain("example.com") is None


async def test_super_domain_retry_once(pool: aiomysql.Pool, execute: Execute) -> None:
    account = await add_account(execute, "acme.example.com")
    store = AccountStore(pool, cache_ttl_s=0)
    found = await store.account_by_realm("foo.acme.example.com")
    assert found is not None and found.account_sid == account
    assert await store.account_by_realm("a.b.acme.example.com") is None  # one label stripped, not two
    await add_account(execute, "example.com")
    assert await store.account_by_realm("other.com") is None  # two labels: no retry
    exact = await store.account_by_realm("acme.example.com")
    assert exact is not None and exact.account_sid == account


async def test_super_domain_counts_only_exactly_one_row(pool: aiomysql.Pool, execute: Execute) -> None:
    # jambonz's schema makes sip_realm UNIQUE; drop that in this test's own database to get two rows.
    await execute("ALTER TABLE accounts DROP INDEX sip_realm")
    first = await add_account(execute, "twice.example.com")
    second = await add_account(execute, "twice.example.com")
    store = AccountStore(pool, cache_ttl_s=0)
    assert await store.account_by_realm("sub.twice.example.com") is None
    direct = await store.account_by_realm("twice.example.com")  # the direct lookup takes the first row
    assert direct is not None and direct.account_sid in {first, second}


# --- capacities and clients -------------------------------------------------------------


async def test_capacities_of_active_non_pending_subscriptions(pool: aiomysql.Pool, execute: Execute) -> None:
    account = await add_account(execute, "cap.example.com")
    other = await add_account(execute, "other.example.com")
    await add_products(execute, account, voice_call_session=20, device=2)
    await add_products(execute, account, pending=True, device=100)
    await add_products(execute, account, end="2000-01-01", device=1000)
    await add_products(execute, account, end="2999-01-01", api_rate=7)
    await add_products(execute, other, device=5)
    capacities = await AccountStore(pool).capacities(account)
    assert sorted((c.category, c.quantity) for c in capacities) == [
        ("api_rate", 7),
        ("device", 2),
        ("voice_call_session", 20),
    ]
    assert await AccountStore(pool).capacities(sid()) == ()


async def test_client_by_account_and_username(pool: aiomysql.Pool, execute: Execute) -> None:
    account = await add_account(execute, "clients.example.com")
    other = await add_account(execute, "clients2.example.com")
    client_sid = await add_client(execute, account, "john", "1234", direct_user=False)
    await add_client(execute, other, "jane", "5678")
    store = AccountStore(pool)
    client = await store.client(account, "john")
    assert client is not None and client.client_sid == client_sid and client.is_active
    assert (client.allow_direct_app_calling, client.allow_direct_user_calling) == (True, False)
    assert client.password is not None and "1234" not in repr(client)
    assert ClientPasswordCipher(ENCRYPTION_SECRET).decrypt(client.password) == "1234"
    assert await store.client(account, "jane") is None
    assert await store.client(account, "nobody") is None


# --- the cache and errors ---------------------------------------------------------------


async def test_lookups_are_cached_for_the_ttl(pool: aiomysql.Pool, execute: Execute) -> None:
    clock = Clock(1000.0)
    store = AccountStore(pool, cache_ttl_s=5, clock=clock)
    account = await add_account(execute, "cached.example.com")
    assert await store.account_by_realm("new.example.org") is None
    await add_account(execute, "new.example.org")
    await execute("UPDATE accounts SET is_active = 0 WHERE account_sid = %s", account)
    cached = await store.account_by_realm("cached.example.com")
    assert cached is not None and cached.is_active is False  # first read: the fresh row
    await execute("UPDATE accounts SET is_active = 1 WHERE account_sid = %s", account)
    clock.now += 4.9
    still = await store.account_by_realm("cached.example.com")
    assert still is not None and still.is_active is False
    assert await store.account_by_realm("new.example.org") is None  # not-found is cached too
    clock.now += 0.2
    fresh = await store.account_by_realm("cached.example.com")
    assert fresh is not None and fresh.is_active is True
    assert await store.account_by_realm("new.example.org") is not None


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_cannot_connect_is_refused() -> None:
    dead = await aiomysql.create_pool(
        host="127.0.0.1",
        port=closed_port(),
        user="root",
        password="",
        minsize=0,
        maxsize=1,
        connect_timeout=2,
    )
    try:
        with pytest.raises(AccountStoreError) as caught:
            await AccountStore(dead).account_by_realm("jambonz.org")
        assert caught.value.refused is True
        assert isinstance(caught.value, StoreUnavailable)
    finally:
        dead.close()
        await dead.wait_closed()


async def test_query_error_is_not_refused_and_not_cached(pool: aiomysql.Pool, execute: Execute) -> None:
    account = await add_account(execute, "err.example.com")
    await execute("RENAME TABLE clients TO clients_gone")
    store = AccountStore(pool)
    with pytest.raises(AccountStoreError) as caught:
        await store.client(account, "john")
    assert caught.value.refused is False
    await execute("RENAME TABLE clients_gone TO clients")
    assert await store.client(account, "john") is None  # the failure was not cached


async def test_cache_single_flight() -> None:
    cache: TtlCache[str, int] = TtlCache(5)
    calls = 0
    release = asyncio.Event()

    async def load() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 42

    waiters = [asyncio.ensure_future(cache.get("k", load)) for _ in range(10)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiters) == [42] * 10
    assert calls == 1


async def test_cache_leader_cancelled_fails_followers_without_cancelling_them() -> None:
    cache: TtlCache[str, int] = TtlCache(5)
    never = asyncio.Event()

    async def load() -> int:
        await never.wait()
        return 1

    leader = asyncio.ensure_future(cache.get("k", load))
    await asyncio.sleep(0)
    follower = asyncio.ensure_future(cache.get("k", load))
    await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(LookupAbandoned):
        await follower
    assert leader.cancelled()


# --- the Registrar shell against real stores --------------------------------------------


class CountingRedis:
    """Delegates to a real client and counts the batch read."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.mget_calls = 0

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        self.mget_calls += 1
        return await self.client.mget(keys)

    def __getattr__(self, name: str) -> object:
        return getattr(self.client, name)


@pytest.fixture
async def auth_hook() -> AsyncIterator[tuple[str, list[dict[str, object]]]]:
    seen: list[dict[str, object]] = []

    async def handle(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Basic " + base64.b64encode(b"foo:bar").decode():
            return web.Response(status=401)
        payload = await request.json()
        seen.append(payload)
        if payload.get("username") == "john":
            return web.json_response({"status": "ok", "expires": 45, "call_hook": "https://x/call"})
        return web.json_response({"status": "fail"})

    app = web.Application()
    app.router.add_post("/auth", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/auth", seen
    finally:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    async with HttpClient() as client:
        yield client


@pytest.fixture
def realm() -> str:
    return f"r{secrets.token_hex(4)}.example.com"


@pytest.fixture
async def jambonz_keys(redis: Redis, realm: str) -> AsyncIterator[None]:
    """The jambonz keys are unprefixed: remove this test's bindings and active-user members."""
    yield
    keys = [key async for key in redis.scan_iter(match=f"user:*@*{realm}")]
    if keys:
        await redis.delete(*keys)
    members = [m async for m, _ in redis.zscan_iter(ACTIVE_USER_KEY, match=f"*{realm}")]
    if members:
        await redis.zrem(ACTIVE_USER_KEY, *members)


T0 = time.time()


def request_event(
    realm: str,
    user: str = "john",
    *,
    port: int = 5062,
    authorization: DigestCredentials | None = None,
    transport: str = "udp",
    correlation: str | None = None,
) -> RegisterReceived:
    return RegisterReceived(
        event_id=secrets.token_hex(8),
        occurred_at=datetime.now(UTC),
        correlation_id=correlation or secrets.token_hex(8),
        reply_to="ingest-a",
        call_id=secrets.token_hex(6),
        cseq=1,
        source_ip="203.0.113.5",
        source_port=port,
        transport=transport,
        via_transport=transport,
        sbc_address="udp/198.51.100.1:5060",
        request_uri=f"sip:{realm}",
        request_uri_host=realm,
        to_uri=f"sip:{user}@{realm}",
        aor_user=user,
        aor_host=realm,
        contact=f"<sip:{user}@203.0.113.5:{port}>;expires=3600",
        contact_uri=f"sip:{user}@203.0.113.5:{port}",
        expires=3600,
        authorization=authorization,
    )


def digest(realm: str, user: str, password: str) -> DigestCredentials:
    nonce = NonceSigner(ENCRYPTION_SECRET).issue(realm, T0)
    response = compute_response(
        username=user,
        realm=realm,
        password=password,
        method="REGISTER",
        uri=f"sip:{realm}",
        nonce=nonce,
        qop="auth",
        nc="00000001",
        cnonce="abc",
    )
    return DigestCredentials(
        username=user,
        realm=realm,
        nonce=nonce,
        uri=f"sip:{realm}",
        response=response,
        qop="auth",
        nc="00000001",
        cnonce="abc",
    )


def delivery(event: RegisterReceived | OptionsReceived, n: int) -> Delivery:
    return Delivery(stream="requests", entry_id=f"{int(T0 * 1000)}-{n}", event=event)


def reply_of(outcome: Outcome | BaseException, names: StreamNames) -> ReplyIssued:
    assert isinstance(outcome, Outcome)
    stream, reply = outcome.appends[-1]
    assert stream == names.replies("ingest-a") and isinstance(reply, ReplyIssued)
    for stream, fact in outcome.appends[:-1]:  # cached refreshes go to their work queue, the rest to the log
        assert stream == (names.refreshes if isinstance(fact, RegistrationRefreshed) else names.registrations)
    return reply


def registrar(
    pool: aiomysql.Pool, redis: object, http: HttpClient, names: StreamNames, hosting: bool = False
) -> Registrar:
    config = RegistrarConfig(encryption_secret=ENCRYPTION_SECRET, hosting=hosting, streams=names)
    return Registrar(config, redis, pool, http, clock=lambda: T0)  # type: ignore[arg-type]


@pytest.mark.usefixtures("jambonz_keys")
async def test_shell_decides_a_batch_with_one_mget(
    pool: aiomysql.Pool,
    execute: Execute,
    redis: Redis,
    http: HttpClient,
    names: StreamNames,
    auth_hook: tuple[str, list[dict[str, object]]],
    realm: str,
) -> None:
    url, seen = auth_hook
    await add_account(execute, realm, hook_sid=await add_hook(execute, url))
    cached_binding = {"proxy": "sip:203.0.113.5:6000", "expiryTime": int(T0 * 1000) + 600_000}
    await redis.set(user_key(f"cached@{realm}"), json.dumps(cached_binding))
    counting = CountingRedis(redis)
    batch = [
        delivery(request_event(realm), 0),  # no credentials: 401
        delivery(
            OptionsReceived(
                event_id="o",
                occurred_at=datetime.now(UTC),
                correlation_id="o",
                reply_to="i",
                call_id="c",
                source_ip="1.1.1.1",
                source_port=1,
                transport="udp",
            ),
            1,
        ),
        delivery(request_event(realm, authorization=digest(realm, "john", "x"), correlation="granted"), 2),
        delivery(request_event(realm, "cached", port=6000), 3),
        delivery(request_event(realm, "jane", authorization=digest(realm, "jane", "x")), 4),
    ]
    results = await registrar(pool, counting, http, names).handle(batch)
    assert counting.mget_calls == 1
    assert len(results) == 5

    challenge = reply_of(results[0], names)
    assert challenge.status == 401 and challenge.headers[0][1].startswith(f'Digest realm="{realm}"')
    assert isinstance(results[0], Outcome) and isinstance(results[0].appends[0][1], RegisterChallenged)

    assert results[1] == Outcome()  # not ours

    granted = reply_of(results[2], names)
    assert (granted.status, granted.headers[1]) == (200, ("Expires", "30"))
    assert granted.correlation_id == "granted" and granted.causation_id == batch[2].entry_id
    fact = results[2].appends[0][1]  # type: ignore[union-attr]
    assert isinstance(fact, RegistrationGranted)
    assert (fact.granted_expires_s, fact.call_hook, fact.aor) == (45, "https://x/call", f"john@{realm}")

    cached = reply_of(results[3], names)
    assert cached.status == 200 and isinstance(results[3].appends[0][1], RegistrationRefreshed)  # type: ignore[union-attr]

    assert reply_of(results[4], names).status == 403
    assert [p["username"] for p in seen] == ["john", "jane"]  # the cache hit and the 401 never reached it


@pytest.mark.usefixtures("jambonz_keys")
async def test_shell_client_table_auth(
    pool: aiomysql.Pool,
    execute: Execute,
    redis: Redis,
    http: HttpClient,
    names: StreamNames,
    realm: str,
) -> None:
    account = await add_account(execute, realm)
    await add_client(execute, account, "john", "1234", direct_user=False)
    shell = registrar(pool, redis, http, names)
    good, bad = await shell.handle(
        [
            delivery(request_event(realm, authorization=digest(realm, "john", "1234"), transport="tcp"), 0),
            delivery(request_event(realm, authorization=digest(realm, "john", "wrong")), 1),
        ]
    )
    assert reply_of(good, names).headers == [
        ("Contact", "<sip:john@203.0.113.5:5062>;expires=3600"),
        ("Expires", "3600"),
    ]
    fact = good.appends[0][1]  # type: ignore[union-attr]
    assert isinstance(fact, RegistrationGranted) and fact.allow_direct_user_calling is False
    assert reply_of(bad, names).headers == [("X-Reason", "Invalid credentials")]


@pytest.mark.usefixtures("jambonz_keys")
async def test_shell_hosted_device_count(
    pool: aiomysql.Pool,
    execute: Execute,
    redis: Redis,
    http: HttpClient,
    names: StreamNames,
    auth_hook: tuple[str, list[dict[str, object]]],
    realm: str,
) -> None:
    url, _ = auth_hook
    account = await add_account(execute, realm, hook_sid=await add_hook(execute, url), ratio=0)
    await add_products(execute, account, voice_call_session=10, device=1)  # limit 0*10 + 1 = 1
    now_ms = int(T0 * 1000)
    await redis.zadd(
        ACTIVE_USER_KEY,
        {
            f"user:u1@{realm}": now_ms + 60_000,
            f"user:u1@sub.{realm}": now_ms + 60_000,  # the suffix match catches sub-domains; same user part
            f"user:u2@{realm}": now_ms + 60_000,
            f"user:u3@{realm}": now_ms - 1,  # expired: purged before counting
        },
    )
    shell = registrar(pool, redis, http, names, hosting=True)
    (allowed,) = await shell.handle([delivery(request_event(realm, authorization=digest(realm, "john", "x")), 0)])
    assert reply_of(allowed, names).status == 200  # 2 distinct users, limit 1, +1 slack
    assert await redis.zscore(ACTIVE_USER_KEY, f"user:u3@{realm}") is None

    await redis.zadd(ACTIVE_USER_KEY, {f"user:u4@{realm}": now_ms + 60_000})
    (denied,) = await shell.handle([delivery(request_event(realm, authorization=digest(realm, "john", "x")), 1)])
    reply = reply_of(denied, names)
    assert (reply.status, reply.reason) == (503, "Max Devices Registered")
    alert = denied.appends[0][1]  # type: ignore[union-attr]
    assert isinstance(alert, DeviceLimitReached) and alert.limit == 1 and alert.account_sid == account


async def test_shell_batch_read_failure_fails_the_registers_only(
    pool: aiomysql.Pool,
    http: HttpClient,
    names: StreamNames,
    realm: str,
) -> None:
    dead = Redis(host="127.0.0.1", port=closed_port(), socket_connect_timeout=1)
    try:
        shell = registrar(pool, dead, http, names)
        options = OptionsReceived(
            event_id="o",
            occurred_at=datetime.now(UTC),
            correlation_id="o",
            reply_to="i",
            call_id="c",
            source_ip="1.1.1.1",
            source_port=1,
            transport="udp",
        )
        register_result, options_result = await shell.handle([delivery(request_event(realm), 0), delivery(options, 1)])
        assert isinstance(register_result, StoreUnavailable)
        assert options_result == Outcome()
    finally:
        await dead.aclose()
