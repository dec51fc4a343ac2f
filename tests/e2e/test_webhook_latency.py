"""Registrations under real webhook latency (issue: processors under webhook latency), end to end over UDP.

- Isolation: one tenant's webhook hangs; another tenant's phones register meanwhile, and a feature
  server's heartbeat is answered, before any of the hanging tenant's REGISTERs is answered. The hanging
  tenant gets 500 with `X-Reason: webhook timeout`, then, its circuit open, 500 at once without a call.
- Deadlines: a REGISTER whose ingest gave up on it (and is gone) is decided by nobody when a processor
  finally reads it: a `RequestExpired` in its history, no webhook call, no `user:<aor>`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from redis.asyncio import Redis

from events import RequestExpired, StreamNames, default_codec
from processors.registrar.nonce import NonceSigner
from projections.history import describe_step, load_history
from tests.e2e.jambonz import AuthWebhook
from tests.e2e.test_registrar_story import (  # noqa: F401 - fixtures, used by name
    ENCRYPTION_SECRET,
    StartSidecar,
    UdpUac,
    add_account,
    clear_realm_keys,
    digest_authorization,
    hooked_realm,
    mysql_execute,
    realm,
    register_from_new_socket,
    register_request,
    sidecars,
    until,
    webhook,
)


class HangingWebhook:
    """A registration webhook that takes every request and never answers it."""

    def __init__(self) -> None:
        self.calls = 0
        self.port = 0
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/auth"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/auth", self._hang)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _hang(self, request: web.Request) -> web.Response:
        self.calls += 1
        await self._release.wait()
        return web.Response(status=503)

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def hanging_realm(
    mysql_db: str,
    hooked_realm: str,  # noqa: F811
    cluster_id: str,
    redis: Redis,
) -> AsyncIterator[tuple[str, HangingWebhook]]:
    """A second tenant (its own account and realm) whose registration webhook hangs."""
    hook = HangingWebhook()
    await hook.start()
    hook_sid = str(uuid.uuid4())
    await mysql_execute(
        mysql_db,
        "INSERT INTO webhooks (webhook_sid, url, method, username, password) VALUES (%s, %s, 'POST', 'foo', 'bar')",
        (hook_sid, hook.url),
    )
    hang_realm = f"{cluster_id}.hang.test"
    provider = str(uuid.uuid4())
    await mysql_execute(
        mysql_db,
        "INSERT INTO service_providers (service_provider_sid, name) VALUES (%s, %s)",
        (provider, f"hang-{cluster_id}"[:64]),
    )
    await add_account(mysql_db, hang_realm, provider, hook_sid)
    try:
        yield hang_realm, hook
    finally:
        await hook.close()
        await clear_realm_keys(redis, hang_realm)


def heartbeat_options(uac: UdpUac) -> str:
    return (
        f"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{uac.port};branch=z9hG4bK{secrets.token_hex(6)};"
        f"rport\r\nFrom: <sip:fs@127.0.0.1>;tag=hb\r\nTo: <sip:127.0.0.1>\r\nCall-ID: hb-{secrets.token_hex(6)}\r\n"
        "CSeq: 1 OPTIONS\r\nX-FS-Status: open\r\nContent-Length: 0\r\n\r\n"
    )


async def test_one_tenants_hanging_webhook_delays_no_other_tenant_nor_a_heartbeat(
    sidecars: StartSidecar,  # noqa: F811
    hooked_realm: str,  # noqa: F811
    hanging_realm: tuple[str, HangingWebhook],
    webhook: AuthWebhook,  # noqa: F811
    redis: Redis,
) -> None:
    healthy_realm = hooked_realm
    hang_realm, hanging = hanging_realm
    sidecar = await sidecars(env={"SIDECAR_WEBHOOK_TIMEOUT_S": "3", "SIDECAR_WEBHOOK_BREAKER_FAILURES": "4"})
    stuck = [
        asyncio.create_task(register_from_new_socket(sidecar.udp_port, f"h{n:02d}", "pw", hang_realm)) for n in range(8)
    ]

    async def all_hanging() -> bool:
        return hanging.calls == 8

    await until(all_hanging, "8 webhook calls hanging")
    # Meanwhile: 30 phones of the healthy tenant register, and a feature server checks in.
    healthy = await asyncio.gather(
        *(register_from_new_socket(sidecar.udp_port, f"u{n:03d}", f"pw{n:03d}", healthy_realm) for n in range(30))
    )
    uac = await UdpUac.open()
    try:
        heartbeat = await uac.transact(sidecar.udp_port, heartbeat_options(uac))
    finally:
        uac.close()
    assert not any(task.done() for task in stuck), "the hanging tenant's REGISTERs were answered first"
    assert [[a.status for a in flow.answers] for flow in healthy] == [[401, 200]] * 30
    assert heartbeat.status == 200 and heartbeat.header("X-FS-Status") is None

    # The hanging tenant: each REGISTER answered 500 at the webhook's deadline, saying why.
    flows = await asyncio.gather(*stuck)
    assert [[a.status for a in flow.answers] for flow in flows] == [[401, 500]] * 8
    assert {flow.answers[-1].header("X-Reason") for flow in flows} == {"webhook timeout"}
    # Four failures in a row opened its circuit: the next REGISTER is answered without a call.
    calls_before = hanging.calls
    started = time.monotonic()
    fast = await register_from_new_socket(sidecar.udp_port, "h99", "pw", hang_realm)
    assert [a.status for a in fast.answers] == [401, 500]
    assert fast.answers[-1].header("X-Reason") == "webhook circuit-open"
    assert hanging.calls == calls_before
    assert time.monotonic() - started < 3  # well within the webhook's 3 s deadline: no call was waited for
    # ... while the healthy tenant still registers.
    again = await register_from_new_socket(sidecar.udp_port, "u000", "pw000", healthy_realm)
    assert [a.status for a in again.answers][-1] == 200


async def test_a_register_whose_ingest_gave_up_is_recorded_expired_and_granted_nothing(
    sidecars: StartSidecar,  # noqa: F811
    hooked_realm: str,  # noqa: F811
    webhook: AuthWebhook,  # noqa: F811
    redis: Redis,
    names: StreamNames,
) -> None:
    home = hooked_realm
    # An SBC with only its SIP edge: nothing decides its requests. It gives up after 1 s (500) and goes.
    edge = await sidecars(env={"SIDECAR_REPLY_TIMEOUT_S": "1"}, roles=("ingest",))
    nonce = NonceSigner(ENCRYPTION_SECRET).issue(home, time.time())
    challenge = f'Digest realm="{home}", nonce="{nonce}", qop="auth", algorithm=MD5'
    uac = await UdpUac.open()
    try:
        call_id = secrets.token_hex(8)
        request = register_request(
            uac,
            "john",
            home,
            call_id=call_id,
            cseq=2,
            expires=3600,
            authorization=digest_authorization(challenge, "john", "1234", f"sip:{home}"),
        )
        answer = await uac.transact(edge.udp_port, request)
    finally:
        uac.close()
    assert (answer.status, answer.header("X-Reason")) == (500, "no decision in time")
    assert edge.task is not None
    edge.stop.set()
    await asyncio.wait_for(edge.task, 10)

    # Processors come up later (a restart, a takeover) and find the request past its deadline.
    await sidecars(roles=("processors", "projections"))
    aor = f"john@{home}"
    codec = default_codec()

    async def expired() -> bool:
        entries = await redis.xrange(names.registrations)
        return any(isinstance(codec.decode(fields), RequestExpired) for _, fields in entries)

    await until(expired, "a RequestExpired")
    facts = [codec.decode(fields) for _, fields in await redis.xrange(names.registrations)]
    assert [type(f).__name__ for f in facts] == ["RequestExpired"]
    fact = facts[0]
    assert isinstance(fact, RequestExpired)
    assert (fact.aor, fact.call_id, fact.request_type) == (aor, call_id, "RegisterReceived")
    assert fact.late_ms >= 0
    assert webhook.seen == []  # nothing was checked
    assert not await redis.exists(f"user:{aor}")
    assert await redis.zscore("active-user", f"user:{aor}") is None

    async def told() -> bool:
        return any(step["type"] == "RequestExpired" for step in await load_history(redis, names, aor))

    await until(told, "the expiry in the history")
    lines = [describe_step(step) for step in await load_history(redis, names, aor)]
    assert "expired before it was decided: nobody waited for the answer" in lines[-1]
    assert f"REGISTER via {edge.settings.ingest_id} " in lines[0] and "from 127.0.0.1" in lines[0]
