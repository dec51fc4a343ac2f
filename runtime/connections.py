"""Connections as async context managers: Redis (plain, Sentinel, TLS), MySQL pools, HTTP session."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import aiomysql
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from runtime.resp import LinkSettings
from runtime.settings import MysqlSettings, RedisSettings

log = logging.getLogger(__name__)


def _redis_tls(settings: RedisSettings) -> dict[str, Any]:
    if not settings.tls:
        return {}
    return {
        "ssl": True,
        "ssl_ca_certs": settings.tls_ca_file,
        "ssl_certfile": settings.tls_cert_file,
        "ssl_keyfile": settings.tls_key_file,
        "ssl_cert_reqs": "required" if settings.tls_ca_file else "none",
    }


def _common(settings: RedisSettings) -> dict[str, Any]:
    return {
        "username": settings.username,
        "password": settings.password.reveal() if settings.password else None,
        "socket_connect_timeout": 5,
        **_redis_tls(settings),
    }


def probe_client(settings: RedisSettings) -> Redis:
    """A client of the one node the settings name (not through Sentinel) that tries once and does no health
    check: a refused AUTH is an answer at once, where redis-py's retries would turn it into a wait."""
    return Redis(
        host=settings.host,
        port=settings.port,
        db=settings.db,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        **_common(settings),
    )


async def is_cluster(settings: RedisSettings) -> bool:
    """Whether the node the settings name is a Redis Cluster node (`INFO cluster`); False when it cannot tell
    (down, refused: the start-up check names that). Sentinel never leads to a Cluster."""
    if settings.sentinels:
        return False
    probe = probe_client(settings)
    try:
        info = await probe.info("cluster")
    except (RedisError, OSError):
        return False
    finally:
        await probe.aclose()
    return int(info.get("cluster_enabled", 0) or 0) == 1


def is_cluster_client(redis: object) -> bool:
    return isinstance(redis, RedisCluster)


def cluster_client(settings: RedisSettings, *, max_connections: int = 64) -> Redis:
    """A Redis Cluster client from any node's address. Typed as `Redis`: it answers every command this service
    sends through redis-py (pipelines and transactions of one slot included), each routed to its slot's master."""
    client = RedisCluster(
        host=settings.host,
        port=settings.port,
        max_connections=max_connections,
        require_full_coverage=False,  # a master down makes its slots fail, not the whole client
        **_common(settings),
    )
    return client  # type: ignore[return-value]


def redis_client(settings: RedisSettings, *, max_connections: int = 64) -> Redis:
    """A Redis client for the settings (not yet connected; connections open lazily)."""
    common: dict[str, Any] = {
        "username": settings.username,
        "password": settings.password.reveal() if settings.password else None,
        "db": settings.db,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
        **_redis_tls(settings),
    }
    if settings.sentinels:
        sentinel = Sentinel(
            list(settings.sentinels),
            sentinel_kwargs={
                "password": settings.sentinel_server_password.reveal() if settings.sentinel_server_password else None,
                "socket_connect_timeout": 5,
            },
            **{
                **common,
                "username": settings.sentinel_username or settings.username,
                "password": (settings.sentinel_password.reveal() if settings.sentinel_password else common["password"]),
            },
        )
        assert settings.sentinel_master_name is not None
        return sentinel.master_for(settings.sentinel_master_name, max_connections=max_connections)
    return Redis(host=settings.host, port=settings.port, max_connections=max_connections, **common)


def resp_link_settings(settings: RedisSettings) -> LinkSettings | None:
    """Settings of the event log's lean connections; None where only redis-py will do (Sentinel)."""
    if settings.sentinels:
        return None
    context = None
    if settings.tls:
        context = ssl.create_default_context(cafile=settings.tls_ca_file)
        if settings.tls_cert_file:
            context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        if not settings.tls_ca_file:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    return LinkSettings(
        host=settings.host,
        port=settings.port,
        db=settings.db,
        username=settings.username,
        password=settings.password.reveal() if settings.password else None,
        ssl_context=context,
    )


@asynccontextmanager
async def open_redis(settings: RedisSettings) -> AsyncIterator[Redis]:
    """The client for the settings: a Redis Cluster client when the node named is one, found out by asking it."""
    client = cluster_client(settings) if await is_cluster(settings) else redis_client(settings)
    try:
        yield client
    finally:
        await client.aclose()


def _mysql_ssl(settings: MysqlSettings) -> ssl.SSLContext | None:
    if not (settings.ssl_ca_file or settings.ssl_cert_file):
        return None
    context = ssl.create_default_context(cafile=settings.ssl_ca_file)
    if settings.ssl_cert_file:
        context.load_cert_chain(settings.ssl_cert_file, settings.ssl_key_file)
    if not settings.reject_unauthorized:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@asynccontextmanager
async def open_mysql(settings: MysqlSettings) -> AsyncIterator[aiomysql.Pool]:
    """An aiomysql pool; the first connection is opened at once so a bad setting fails at startup."""
    pool = await aiomysql.create_pool(
        host=settings.host,
        port=settings.port,
        user=settings.user,
        password=settings.password.reveal(),
        db=settings.database,
        minsize=1,
        maxsize=settings.connection_limit,
        autocommit=True,
        ssl=_mysql_ssl(settings),
        pool_recycle=3600,
        connect_timeout=5,
    )
    try:
        yield pool
    finally:
        pool.close()
        await pool.wait_closed()


@asynccontextmanager
async def open_http(user_agent: str | None = None, limit: int = 256) -> AsyncIterator[aiohttp.ClientSession]:
    """One pooled keep-alive session of the process, for the InfluxDB alerts (the webhook has its own client)."""
    headers = {"User-Agent": user_agent} if user_agent else None
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=30, ttl_dns_cache=60)
    # Deadlines are the caller's (asyncio.timeout); no cookies are ever wanted from a webhook.
    session = aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, connect=5),
    )
    try:
        yield session
    finally:
        await session.close()
