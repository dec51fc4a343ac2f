"""REGISTER end to end over the native front with sipp (SPEC 2, SPEC 6 item 3), real MariaDB and webhook."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.conftest import free_port
from tests.e2e.conftest import Sidecar, projected, run_sipp, start_sidecar, stop_sidecar
from tests.e2e.jambonz import AuthWebhook, populate


async def clear_jambonz_keys(redis: Redis) -> None:
    keys = [k async for k in redis.scan_iter(match="user:*jambonz.org", count=1000)]
    if keys:
        await redis.delete(*keys)
        await redis.zrem("active-user", *keys)


@pytest.fixture
async def registrar(cluster_id: str, mysql_db: str, redis: Redis, webhook: AuthWebhook) -> AsyncIterator[Sidecar]:
    await populate(mysql_db, webhook.url)
    await clear_jambonz_keys(redis)
    running = await start_sidecar(cluster_id, mysql_db, env={"JAMBONES_HOSTING": "1"})
    try:
        yield running
    finally:
        await stop_sidecar(running)
        await clear_jambonz_keys(redis)


def received(messages: str) -> str:
    """Only the messages sipp received, from its -trace_msg log."""
    blocks = messages.split("-----------------------------------------------")
    return "\n".join(block for block in blocks if "message received" in block)


def responses(messages: str) -> list[str]:
    """The status lines sipp received, in order."""
    return [line.strip() for line in messages.splitlines() if line.startswith("SIP/2.0 ")]


def header_values(messages: str, name: str) -> list[str]:
    prefix = name.lower() + ":"
    return [
        line.split(":", 1)[1].strip() for line in received(messages).splitlines() if line.lower().startswith(prefix)
    ]


async def register(
    sidecar: Sidecar,
    user: str,
    password: str,
    *,
    final: int = 200,
    expires: int = 3600,
    domain: str = "jambonz.org",
    local_port: int | None = None,
    transport: str = "u1",
):
    port = sidecar.udp_port if transport == "u1" else sidecar.tcp_port
    extra = ["-key", "expires", str(expires), "-au", user, "-ap", password]
    if local_port is not None:
        extra += ["-p", str(local_port)]
    return await run_sipp(
        "register-auth.xml",
        port,
        transport=transport,
        inf=f"SEQUENTIAL\n{user};{domain};{password}\n",
        extra=extra,
        replace={"[final]": str(final)},
    )


async def register_once(
    sidecar: Sidecar,
    user: str,
    domain: str,
    ruri_host: str,
    final: int,
    *,
    local_port: int | None = None,
    expires: int = 3600,
):
    extra = ["-key", "expires", str(expires)]
    if local_port is not None:
        extra += ["-p", str(local_port)]
    return await run_sipp(
        "register-expect.xml",
        sidecar.udp_port,
        inf=f"SEQUENTIAL\n{user};{domain};x;{ruri_host}\n",
        extra=extra,
        replace={"[final]": str(final)},
    )


async def test_spec_register_scenarios(registrar: Sidecar, redis: Redis, webhook: AuthWebhook) -> None:
    # uac-register-unknown-realm: the deactivated account
    result = await register_once(registrar, "john", "deactivated.jambonz.org", "deactivated.jambonz.org", 403)
    assert result.returncode == 0, result.stderr
    assert header_values(result.messages, "X-Reason") == ["Account has been deactivated"]

    # uac-reject-ipv4-realm: Request-URI with an IPv4 host, 403 before anything else
    result = await register_once(registrar, "john", "jambonz.org", "192.169.1.1", 403)
    assert result.returncode == 0, result.stderr
    assert header_values(result.messages, "X-Reason") == []

    # uac-register-auth-failure-expect-403: jane with a wrong password
    result = await register(registrar, "jane", "wrong", final=403)
    assert result.returncode == 0, result.stderr
    assert responses(result.messages) == ["SIP/2.0 401 Unauthorized", "SIP/2.0 403 Forbidden"]
    assert header_values(result.messages, "X-Reason") == ["Invalid credentials"]
    challenge = header_values(result.messages, "WWW-Authenticate")[0]
    assert challenge.startswith('Digest realm="jambonz.org", algorithm=MD5, qop="auth", nonce="')

    # uac-register-auth-success: john/1234 asks 3600, the webhook grants 45, UDP advertises 30
    john_port = free_port()
    before_ms = time.time() * 1000
    result = await register(registrar, "john", "1234", local_port=john_port)
    assert result.returncode == 0, result.stderr
    assert responses(result.messages) == ["SIP/2.0 401 Unauthorized", "SIP/2.0 200 OK"]
    assert header_values(result.messages, "Expires")[-1] == "30"
    assert header_values(result.messages, "Contact")[-1] == f"<sip:john@127.0.0.1:{john_port};transport=UDP>;expires=30"
    record = json.loads(await projected(redis, "user:john@jambonz.org") or b"")
    assert record["contact"] == f"sip:john@127.0.0.1:{john_port};transport=UDP"
    assert record["sbcAddress"] == f"udp/127.0.0.1:{registrar.udp_port},tcp/127.0.0.1:{registrar.tcp_port}"
    assert record["protocol"] == "udp" and record["proxy"] == f"sip:127.0.0.1:{john_port}"
    assert record["callHook"] == "http://127.0.0.1:3000/call"
    assert list(record)[-1] == "expiryTime"
    assert before_ms + 44_000 <= record["expiryTime"] <= time.time() * 1000 + 45_000
    assert 43 <= await redis.ttl("user:john@jambonz.org") <= 45
    assert await redis.zscore("active-user", "user:john@jambonz.org") == record["expiryTime"]
    posted = webhook.seen[-1]
    assert posted.method == "POST" and posted.signature_ok and posted.basic_ok
    assert posted.payload["source_address"] == "127.0.0.1" and posted.payload["source_port"] == john_port
    assert posted.payload["expires"] == 3600 and posted.payload["method"] == "REGISTER"
    assert posted.payload["username"] == "john" and posted.payload["realm"] == "jambonz.org"
    assert "user-agent" in posted.payload["headers"]  # type: ignore[operator]

    # uac-re-register-auth-success: same source, more than 30 s left: 200 from the cache, no webhook
    calls = len(webhook.seen)
    ttl_before_ms = await redis.pttl("user:john@jambonz.org")
    result = await register_once(registrar, "john", "jambonz.org", "jambonz.org", 200, local_port=john_port)
    assert result.returncode == 0, result.stderr
    assert header_values(result.messages, "Expires") == ["30"]
    assert header_values(result.messages, "Contact") == [f"<sip:device@127.0.0.1:{john_port};transport=UDP>;expires=30"]
    assert len(webhook.seen) == calls
    assert json.loads(await redis.get("user:john@jambonz.org")) == record  # same record ...
    assert await redis.pttl("user:john@jambonz.org") <= ttl_before_ms  # ... and its TTL not refreshed

    # uac-register-auth-success-jane: Expires 20, twice from the same source, each challenged and granted 20
    # (the binding has fewer than 30 s left, so the second is not answered from the cache)
    jane_port = free_port()
    for _ in range(2):
        result = await register(registrar, "jane", "5678", expires=20, local_port=jane_port)
        assert result.returncode == 0, result.stderr
        assert responses(result.messages) == ["SIP/2.0 401 Unauthorized", "SIP/2.0 200 OK"]
        assert header_values(result.messages, "Expires")[-1] == "20"
        await projected(redis, "user:jane@jambonz.org")
        assert 18 <= await redis.ttl("user:jane@jambonz.org") <= 20

    # uac-register-gh-83: To-URI with a double '@'
    result = await register_once(registrar, "john@jambonz.org", "jambonz.org", "jambonz.org", 403)
    assert result.returncode == 0, result.stderr
    assert header_values(result.messages, "X-Reason") == ["Invalid address of record"]

    # unregister: 401, then 200 with Contact * and Expires 0; the binding is gone
    result = await run_sipp(
        "unregister.xml",
        registrar.udp_port,
        inf="SEQUENTIAL\njohn;jambonz.org;1234\n",
        extra=["-au", "john", "-ap", "1234"],
    )
    assert result.returncode == 0, result.stderr
    assert responses(result.messages) == ["SIP/2.0 401 Unauthorized", "SIP/2.0 200 OK"]
    assert header_values(result.messages, "Expires")[-1] == "0"
    assert header_values(result.messages, "Contact")[-1] == "*"
    assert webhook.seen[-1].payload["expires"] == 0
    assert await projected(redis, "user:john@jambonz.org", gone=True) is None
    assert await redis.zscore("active-user", "user:john@jambonz.org") is None


async def test_tcp_registration_keeps_the_granted_expires(registrar: Sidecar, redis: Redis) -> None:
    result = await register(registrar, "john", "1234", transport="t1")
    assert result.returncode == 0, result.stderr
    assert header_values(result.messages, "Expires")[-1] == "45"
    record = json.loads(await projected(redis, "user:john@jambonz.org") or b"")
    assert record["protocol"] == "tcp"
