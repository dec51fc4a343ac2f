"""Nothing crackable at rest: after registrations with digest credentials (right and wrong passwords), no key
of the cluster in Redis, no stream entry, no history step and no log line holds the digest response, the
nonce answer or anything a password can be recovered from; the Authorization fields travel sealed."""

from __future__ import annotations

import logging
import re
import secrets

import pytest
from redis.asyncio import Redis

from events import StreamNames
from tests.e2e.jambonz import AuthWebhook
from tests.e2e.test_registrar_story import (  # noqa: F401 - fixtures, used by name
    StartSidecar,
    UdpUac,
    digest_authorization,
    hooked_realm,
    realm,
    register_request,
    sidecars,
    webhook,
)


async def everything_stored(redis: Redis, cluster_id: str, home: str) -> bytes:
    """Every value of every key of this cluster and realm, streams and sets included, as one blob."""
    chunks: list[bytes] = []
    keys = [key async for key in redis.scan_iter(match=f"{cluster_id}:*", count=1000)]
    keys += [key async for key in redis.scan_iter(match=f"user:*@{home}", count=1000)]
    for key in keys:
        kind = (await redis.type(key)).decode()
        if kind == "stream":
            for _, fields in await redis.xrange(key):
                chunks += [k + b"=" + v for k, v in fields.items()]
        elif kind == "zset":
            chunks += await redis.zrange(key, 0, -1)
        elif kind == "list":
            chunks += await redis.lrange(key, 0, -1)
        elif kind == "hash":
            chunks += [k + b"=" + v for k, v in (await redis.hgetall(key)).items()]
        elif kind == "set":
            chunks += list(await redis.smembers(key))
        elif kind == "string":
            chunks.append(await redis.get(key) or b"")
    return b"\n".join(chunks)


async def test_no_digest_response_is_stored_or_logged(
    sidecars: StartSidecar,  # noqa: F811
    hooked_realm: str,  # noqa: F811
    webhook: AuthWebhook,  # noqa: F811
    redis: Redis,
    names: StreamNames,
    cluster_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    home = hooked_realm
    sidecar = await sidecars(env={"SIDECAR_WORKQUEUE_GRACE_S": "3600"})  # keep every request entry to scan it
    responses: list[str] = []
    statuses: list[int] = []
    for user, password in (("john", "1234"), ("jane", "wrong-password"), ("joe", "9012")):
        uac = await UdpUac.open()
        try:
            call_id = secrets.token_hex(8)
            challenge = await uac.transact(
                sidecar.udp_port, register_request(uac, user, home, call_id=call_id, cseq=1, expires=3600)
            )
            authorization = digest_authorization(
                challenge.header("WWW-Authenticate") or "", user, password, f"sip:{home}"
            )
            responses.append(re.search(r'response="([0-9a-f]{32})"', authorization).group(1))  # type: ignore[union-attr]
            answer = await uac.transact(
                sidecar.udp_port,
                register_request(uac, user, home, call_id=call_id, cseq=2, expires=3600, authorization=authorization),
            )
            statuses.append(answer.status)
        finally:
            uac.close()
    assert statuses == [200, 403, 200]  # a wrong password is no more stored than the right ones
    stored = await everything_stored(redis, cluster_id, home)
    assert stored.count(b"RegisterReceived") >= 6  # every request entry was scanned
    for response in responses:
        assert response.encode() not in stored
        assert all(response not in record.getMessage() for record in caplog.records)
    assert b'"response"' not in stored and b'"cnonce"' not in stored
    assert stored.count(b"sealed_authorization") == 3  # the three credentialed REGISTERs, sealed
