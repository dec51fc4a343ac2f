"""The registrar's MySQL lookups (SPEC 2.2, 2.4, 2.7, 5.4), behind a short in-process cache.

jambonz queries MySQL on every REGISTER unless JAMBONES_MYSQL_REFRESH_TTL is set. We always
cache, for JAMBONES_MYSQL_REFRESH_TTL seconds when set and 5 s otherwise, so the hot path of
thousands of REGISTERs a second does not hit MySQL per request; a changed account (deactivated,
new webhook) takes effect within that time. Not-found results are cached too (a flood of
REGISTERs for an unknown realm costs one query per TTL); errors are not.

Errors become `AccountStoreError`; `refused` marks "could not connect" (pymysql error 2003,
jambonz's `connect ECONNREFUSED`), which the device-limit check lets through.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiomysql
import pymysql

from processors.registrar.facts import Account, Capacity, Client, RegistrationHook
from processors.registrar.lookup_cache import Missing, TtlCache
from runtime.errors import StoreUnavailable

DEFAULT_CACHE_TTL_S = 5.0
CANNOT_CONNECT = 2003  # CR_CONN_HOST_ERROR: "Can't connect to MySQL server"

ACCOUNT_BY_REALM_SQL = """
SELECT acc.account_sid, acc.sip_realm, acc.service_provider_sid, acc.is_active,
       acc.webhook_secret, acc.device_to_call_ratio,
       rh.webhook_sid AS hook_sid, rh.url AS hook_url, rh.method AS hook_method,
       rh.username AS hook_username, rh.password AS hook_password
FROM accounts acc
LEFT JOIN webhooks AS rh ON acc.registration_hook_sid = rh.webhook_sid
WHERE acc.sip_realm = %s
"""

CAPACITIES_SQL = """
SELECT prod.category, ap.quantity
FROM products prod, account_products ap, account_subscriptions subs
WHERE subs.account_sid = %s
  AND subs.pending = 0
  AND (subs.effective_end_date IS NULL OR subs.effective_end_date > CURDATE())
  AND ap.account_subscription_sid = subs.account_subscription_sid
  AND ap.product_sid = prod.product_sid
"""

CLIENT_SQL = """
SELECT client_sid, is_active, password,
       allow_direct_app_calling, allow_direct_queue_calling, allow_direct_user_calling
FROM clients
WHERE account_sid = %s AND username = %s
"""

Row = dict[str, Any]


class AccountStoreError(StoreUnavailable):
    def __init__(self, message: str, *, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


def super_domain(realm: str) -> str | None:
    """`foo.acme.example.com` → `acme.example.com`; None for two labels or fewer."""
    labels = realm.split(".")
    return ".".join(labels[1:]) if len(labels) > 2 else None


def _account(row: Row) -> Account:
    hook = None
    if row.get("hook_url"):
        hook = RegistrationHook(
            url=row["hook_url"],
            method=row.get("hook_method") or "POST",
            username=row.get("hook_username"),
            password=row.get("hook_password"),
            webhook_sid=row.get("hook_sid"),
        )
    ratio = row.get("device_to_call_ratio")
    return Account(
        account_sid=row["account_sid"],
        is_active=bool(row.get("is_active")),
        webhook_secret=row.get("webhook_secret") or "",
        service_provider_sid=row.get("service_provider_sid"),
        sip_realm=row.get("sip_realm"),
        device_to_call_ratio=int(ratio) if ratio is not None else 5,
        registration_hook=hook,
    )


def _client(row: Row) -> Client:
    return Client(
        client_sid=row["client_sid"],
        is_active=bool(row.get("is_active")),
        password=row.get("password"),
        allow_direct_app_calling=bool(row.get("allow_direct_app_calling")),
        allow_direct_queue_calling=bool(row.get("allow_direct_queue_calling")),
        allow_direct_user_calling=bool(row.get("allow_direct_user_calling")),
    )


class AccountStore:
    """Account, capacity and client lookups on an aiomysql pool (owned by the caller)."""

    def __init__(
        self,
        pool: aiomysql.Pool,
        *,
        cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
        query_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._timeout_s = query_timeout_s
        self._accounts: TtlCache[str, Account | None] = TtlCache(cache_ttl_s, clock=clock)
        self._capacities: TtlCache[str, tuple[Capacity, ...]] = TtlCache(cache_ttl_s, clock=clock)
        self._clients: TtlCache[tuple[str, str], Client | None] = TtlCache(cache_ttl_s, clock=clock)

    async def account_by_realm(self, realm: str) -> Account | None:
        """The account whose sip_realm is `realm`, else the one of its super-domain if exactly one."""
        return await self._accounts.get(realm, lambda: self._load_account(realm))

    def cached_account(self, realm: str) -> Account | None | Missing:
        """The account of `realm` if the cache holds it now (None: cached as not found), else MISSING."""
        return self._accounts.peek(realm)

    async def capacities(self, account_sid: str) -> tuple[Capacity, ...]:
        return await self._capacities.get(account_sid, lambda: self._load_capacities(account_sid))

    async def client(self, account_sid: str, username: str) -> Client | None:
        """The first `clients` row of the account with that username."""
        key = (account_sid, username)
        return await self._clients.get(key, lambda: self._load_client(account_sid, username))

    async def _load_account(self, realm: str) -> Account | None:
        rows = await self._query(ACCOUNT_BY_REALM_SQL, (realm,))
        if rows:
            return _account(rows[0])
        parent = super_domain(realm)
        if parent is None:
            return None
        rows = await self._query(ACCOUNT_BY_REALM_SQL, (parent,))
        return _account(rows[0]) if len(rows) == 1 else None

    async def _load_capacities(self, account_sid: str) -> tuple[Capacity, ...]:
        rows = await self._query(CAPACITIES_SQL, (account_sid,))
        return tuple(Capacity(category=row["category"], quantity=int(row["quantity"] or 0)) for row in rows)

    async def _load_client(self, account_sid: str, username: str) -> Client | None:
        rows = await self._query(CLIENT_SQL, (account_sid, username))
        return _client(rows[0]) if rows else None

    async def _query(self, sql: str, args: Sequence[object]) -> list[Row]:
        try:
            async with asyncio.timeout(self._timeout_s):
                conn = await self._pool.acquire()
                try:
                    async with conn.cursor(aiomysql.DictCursor) as cursor:
                        await cursor.execute(sql, args)
                        rows: list[Row] = list(await cursor.fetchall())
                        return rows
                except BaseException:
                    conn.close()  # interrupted mid-query: never hand it back to the pool
                    raise
                finally:
                    self._pool.release(conn)
        except TimeoutError as exc:
            raise AccountStoreError("MySQL query timed out", refused=False) from exc
        except pymysql.err.OperationalError as exc:
            code = exc.args[0] if exc.args else None
            raise AccountStoreError(f"MySQL error {code}", refused=code == CANNOT_CONNECT) from exc
        except pymysql.err.MySQLError as exc:
            raise AccountStoreError(f"MySQL error {type(exc).__name__}", refused=False) from exc
        except ConnectionRefusedError as exc:
            raise AccountStoreError("MySQL connection refused", refused=True) from exc
        except OSError as exc:
            raise AccountStoreError(f"MySQL connection failed: {type(exc).__name__}", refused=False) from exc
