"""The registrar end to end over the native front (issue 4, "Must show"): `clients` authentication,
forged and expired nonces, replay, history, and two registrar processes with one of them crashing.

Every test registers under a realm of its own (`<cluster id>.story.test`), so the `user:` keys it
writes never meet those of another test run sharing the Redis database, and it deletes them after.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import aiohttp
import aiomysql
import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from events import RegisterChallenged, RegistrationGranted, StreamNames, default_codec
from events.streams import GROUP_PROCESSORS
from projections.history import describe_step, load_history
from projections.snapshot import SnapshotTaker
from runtime import app
from tests.conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER, base_env, free_port, sidecar_cli
from tests.e2e import jambonz
from tests.e2e.conftest import Sidecar, projected, run_sipp, start_sidecar, stop_sidecar
from tests.e2e.jambonz import WEBHOOK_SECRET, AuthWebhook, populate

ROOT = Path(__file__).resolve().parents[2]
ENCRYPTION_SECRET = "test-encryption-secret"  # base_env's
T1_S, T2_S, TIMER_F_S = 0.5, 4.0, 32.0  # RFC 3261 17.1.2.2: a non-INVITE client transaction over UDP
MANY_USERS = 60


# --- a UDP user agent client with RFC 3261 retransmissions ----------------------------------------


@dataclass
class SipAnswer:
    status: int
    reason: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)


def parse_answer(data: bytes) -> SipAnswer:
    """A SIP response's status line and headers (written here, independent of the service's parser)."""
    lines = data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    version, status, reason = lines[0].split(" ", 2)
    assert version == "SIP/2.0", lines[0]
    headers = [(name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in lines[1:])]
    return SipAnswer(int(status), reason, headers)


class UdpUac(asyncio.DatagramProtocol):
    """One UDP socket (one source port), one transaction at a time, retransmitting until a final answer."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.answers: asyncio.Queue[SipAnswer] = asyncio.Queue()

    @classmethod
    async def open(cls, source_ip: str = "127.0.0.1") -> UdpUac:
        _, uac = await asyncio.get_running_loop().create_datagram_endpoint(cls, local_addr=(source_ip, 0))
        return uac

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # not a subclass on 3.11

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.answers.put_nowait(parse_answer(data))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def transact(self, target_port: int, request: str) -> SipAnswer:
        """Sends `request`, retransmits it (Timer E) and returns its final answer; TimeoutError after Timer F."""
        assert self.transport is not None
        call_id = re.search(r"^Call-ID: ([^\r\n]+)", request, re.M).group(1)  # type: ignore[union-attr]
        cseq = re.search(r"^CSeq: ([^\r\n]+)", request, re.M).group(1)  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        give_up = loop.time() + TIMER_F_S
        interval = T1_S
        while loop.time() < give_up:
            self.transport.sendto(request.encode(), ("127.0.0.1", target_port))
            resend_at = min(loop.time() + interval, give_up)
            while (left := resend_at - loop.time()) > 0:
                try:
                    answer = await asyncio.wait_for(self.answers.get(), left)
                except TimeoutError:
                    break
                # A repeated answer to an earlier transaction (our retransmission crossed it) is not ours.
                if answer.header("Call-ID") == call_id and answer.header("CSeq") == cseq and answer.status >= 200:
                    return answer
            interval = min(interval * 2, T2_S)
        raise TimeoutError(f"no final answer to {cseq} {call_id} within {TIMER_F_S} s")


def register_request(
    uac: UdpUac, user: str, realm: str, *, call_id: str, cseq: int, expires: int, authorization: str | None = None
) -> str:
    contact = "*" if expires == 0 else f"<sip:{user}@127.0.0.1:{uac.port};transport=udp>;expires={expires}"
    lines = [
        f"REGISTER sip:{realm} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{uac.port};branch=z9hG4bK{secrets.token_hex(8)};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{realm}>;tag={call_id[:10]}",
        f"To: <sip:{user}@{realm}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: {contact}",
        f"Expires: {expires}",
        *([f"Authorization: {authorization}"] if authorization else []),
        "User-Agent: story-uac",
        "Content-Length: 0",
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


def challenge_params(challenge: str) -> dict[str, str]:
    assert challenge.startswith("Digest "), challenge
    return {k: v for k, v in re.findall(r'(\w+)="?([^",]*)"?', challenge.removeprefix("Digest "))}


def digest_authorization(challenge: str, user: str, password: str, uri: str, *, nonce: str | None = None) -> str:
    """RFC 2617 qop=auth credentials for a challenge (or for a nonce of our choosing)."""
    params = challenge_params(challenge)
    realm, nonce = params["realm"], nonce or params["nonce"]
    cnonce, nc = secrets.token_hex(4), "00000001"
    ha1 = hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
    response = hashlib.md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{response}", '
        f'algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"'
    )


@dataclass
class Flow:
    """One REGISTER and, when challenged, its answer to the challenge: both answers and their times."""

    user: str
    answers: list[SipAnswer] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    port: int = 0


async def register(uac: UdpUac, target_port: int, user: str, password: str, realm: str, *, expires: int = 3600) -> Flow:
    flow = Flow(user, port=uac.port)
    call_id = secrets.token_hex(10)
    started = time.monotonic()
    answer = await uac.transact(
        target_port, register_request(uac, user, realm, call_id=call_id, cseq=1, expires=expires)
    )
    flow.answers.append(answer)
    flow.seconds.append(time.monotonic() - started)
    if answer.status == 401:
        authorization = digest_authorization(answer.header("WWW-Authenticate") or "", user, password, f"sip:{realm}")
        started = time.monotonic()
        answer = await uac.transact(
            target_port,
            register_request(uac, user, realm, call_id=call_id, cseq=2, expires=expires, authorization=authorization),
        )
        flow.answers.append(answer)
        flow.seconds.append(time.monotonic() - started)
    return flow


async def register_from_new_socket(
    target_port: int, user: str, password: str, realm: str, *, expires: int = 3600
) -> Flow:
    uac = await UdpUac.open()
    try:
        return await register(uac, target_port, user, password, realm, expires=expires)
    finally:
        uac.close()


# --- data, sidecars, clean-up ---------------------------------------------------------------------


async def mysql_execute(database: str, statement: str, args: tuple[object, ...]) -> None:
    connection = await aiomysql.connect(
        host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD, db=database, autocommit=True
    )
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(statement, args)
    finally:
        connection.close()


async def add_account(database: str, realm: str, service_provider_sid: str, hook_sid: str | None) -> str:
    account_sid = str(uuid.uuid4())
    await mysql_execute(
        database,
        "INSERT INTO accounts (account_sid, name, sip_realm, service_provider_sid, "
        "registration_hook_sid, webhook_secret) VALUES (%s, %s, %s, %s, %s, %s)",
        (account_sid, realm[:64], realm, service_provider_sid, hook_sid, WEBHOOK_SECRET),
    )
    return account_sid


def api_server_encrypt(password: str, secret: str = ENCRYPTION_SECRET) -> str:
    """`clients.password` as jambonz's api-server stores it: AES-256-CBC, key = base64(SHA-256(secret))[:32]."""
    key = base64.b64encode(hashlib.sha256(secret.encode()).digest())[:32]
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    content = encryptor.update(padder.update(password.encode()) + padder.finalize()) + encryptor.finalize()
    return json.dumps({"iv": iv.hex(), "content": content.hex()}, separators=(",", ":"))  # JSON.stringify


@pytest.fixture
def realm(cluster_id: str) -> str:
    return f"{cluster_id}.story.test"


@pytest.fixture
async def webhook(realm: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AuthWebhook]:
    """The customer auth webhook, for this test's realm, knowing john, jane, joe and u000..u059."""
    users = {**jambonz.USERS, "joe": "9012", **{f"u{n:03d}": f"pw{n:03d}" for n in range(MANY_USERS)}}
    monkeypatch.setattr(jambonz, "REALM", realm)
    monkeypatch.setattr(jambonz, "USERS", users)
    hook = AuthWebhook()
    await hook.start()
    try:
        yield hook
    finally:
        await hook.close()


async def clear_realm_keys(redis: Redis, realm: str) -> None:
    keys = [key async for key in redis.scan_iter(match=f"user:*@{realm}", count=1000)]
    members = [
        m for m, _ in await redis.zrange("active-user", 0, -1, withscores=True) if m.endswith(f"@{realm}".encode())
    ]
    if keys:
        await redis.delete(*keys)
    if members:
        await redis.zrem("active-user", *members)


StartSidecar = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def sidecars(cluster_id: str, mysql_db: str, redis: Redis, realm: str) -> AsyncIterator[StartSidecar]:
    """Starts sidecars of this test's cluster; stops those still running and deletes the realm's keys after."""
    started: list[Sidecar] = []

    async def start(env: dict[str, str] | None = None, roles: tuple[str, ...] = app.ROLES) -> Sidecar:
        running = await start_sidecar(cluster_id, mysql_db, env=env, roles=roles)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in reversed(started):
            if running.task is not None and not running.task.done():
                await stop_sidecar(running)
        await clear_realm_keys(redis, realm)


@pytest.fixture
async def hooked_realm(mysql_db: str, webhook: AuthWebhook, realm: str) -> str:
    """SPEC 6 data, plus an active account for this test's realm with the registration webhook."""
    sids = await populate(mysql_db, webhook.url)
    await add_account(mysql_db, realm, sids["sp"], sids["hook"])
    return realm


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 5.0) -> None:
    """Polls `check` until it is true; the projections are eventually consistent."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# --- 1. clients authentication (SPEC 2.7) ----------------------------------------------------------


async def test_clients_table_authenticates_with_the_api_server_cipher(
    sidecars: StartSidecar, mysql_db: str, redis: Redis, realm: str
) -> None:
    sids = await populate(mysql_db, "http://127.0.0.1:9/never-called")
    account_sid = await add_account(mysql_db, realm, sids["sp"], hook_sid=None)  # no registration hook
    await mysql_execute(
        mysql_db,
        "INSERT INTO clients (client_sid, account_sid, is_active, username, password, "
        "allow_direct_app_calling, allow_direct_queue_calling, allow_direct_user_calling) "
        "VALUES (%s, %s, 1, 'alice', %s, 1, 0, 1)",
        (str(uuid.uuid4()), account_sid, api_server_encrypt("s3cret-Pa55")),
    )
    sidecar = await sidecars()

    flow = await register_from_new_socket(sidecar.udp_port, "alice", "s3cret-Pa55", realm)
    assert [a.status for a in flow.answers] == [401, 200]
    assert flow.answers[1].header("Expires") == "30"  # the requested 3600, advertised 30 over UDP
    record = json.loads(await projected(redis, f"user:alice@{realm}") or b"")
    assert record["allow_direct_app_calling"] == 1
    assert record["allow_direct_queue_calling"] == 0
    assert record["allow_direct_user_calling"] == 1
    assert "callHook" not in record  # the clients table grants no call hook
    assert record["proxy"] == f"sip:127.0.0.1:{flow.port}"
    assert 3598 <= await redis.ttl(f"user:alice@{realm}") <= 3600  # no webhook: the requested expires

    flow = await register_from_new_socket(sidecar.udp_port, "alice", "not-her-password", realm)
    assert [a.status for a in flow.answers] == [401, 403]
    assert flow.answers[1].header("X-Reason") == "Invalid credentials"
    flow = await register_from_new_socket(sidecar.udp_port, "mallory", "s3cret-Pa55", realm)
    assert [a.status for a in flow.answers] == [401, 403]  # no such client
    assert flow.answers[1].header("X-Reason") == "Invalid credentials"


# --- 2. forged and expired nonces ------------------------------------------------------------------


async def test_forged_and_expired_nonces_get_a_stale_challenge_and_no_webhook_call(
    sidecars: StartSidecar, hooked_realm: str, webhook: AuthWebhook, redis: Redis
) -> None:
    realm = hooked_realm
    sidecar = await sidecars(env={"SIDECAR_NONCE_TTL_S": "1"})
    uac = await UdpUac.open()
    try:
        call_id = secrets.token_hex(10)
        first = await uac.transact(
            sidecar.udp_port, register_request(uac, "john", realm, call_id=call_id, cseq=1, expires=3600)
        )
        assert first.status == 401
        challenge = first.header("WWW-Authenticate") or ""
        assert "stale" not in challenge

        # a nonce the service never issued (jambonz's format), with a correct digest for it
        forged = digest_authorization(challenge, "john", "1234", f"sip:{realm}", nonce="157590482938000")
        answer = await uac.transact(
            sidecar.udp_port,
            register_request(uac, "john", realm, call_id=call_id, cseq=2, expires=3600, authorization=forged),
        )
        assert answer.status == 401
        assert (answer.header("WWW-Authenticate") or "").endswith(", stale=true")
        assert challenge_params(answer.header("WWW-Authenticate") or "")["nonce"] != "157590482938000"

        # the service's own nonce, answered after SIDECAR_NONCE_TTL_S
        await asyncio.sleep(2.05)
        late = digest_authorization(challenge, "john", "1234", f"sip:{realm}")
        answer = await uac.transact(
            sidecar.udp_port,
            register_request(uac, "john", realm, call_id=call_id, cseq=3, expires=3600, authorization=late),
        )
        assert answer.status == 401
        fresh_challenge = answer.header("WWW-Authenticate") or ""
        assert 'qop="auth"' in fresh_challenge and "stale=true" in fresh_challenge
        assert webhook.seen == []  # neither reached the webhook

        # the fresh nonce of the stale challenge, answered at once, is accepted
        fresh = digest_authorization(fresh_challenge, "john", "1234", f"sip:{realm}")
        answer = await uac.transact(
            sidecar.udp_port,
            register_request(uac, "john", realm, call_id=call_id, cseq=4, expires=3600, authorization=fresh),
        )
        assert answer.status == 200
        assert len(webhook.seen) == 1 and webhook.seen[0].signature_ok
    finally:
        uac.close()
    codec = default_codec()
    challenged = [codec.decode(f) for _, f in await redis.xrange(sidecar.names.registrations)]
    assert [e.stale for e in challenged if isinstance(e, RegisterChallenged)] == [False, True, True]


async def test_a_storm_beyond_max_pending_is_answered_503_at_once(
    sidecars: StartSidecar, hooked_realm: str, webhook: AuthWebhook, redis: Redis
) -> None:
    """SIDECAR_MAX_PENDING: while one REGISTER waits on a slow webhook, the next is shed with 503 and
    Retry-After, recorded nowhere (a heartbeat still goes through); once the queue drains, REGISTERs are
    decided again."""
    realm = hooked_realm
    sidecar = await sidecars(env={"SIDECAR_MAX_PENDING": "1"})
    webhook.delay_s = 1.0
    slow = asyncio.create_task(register_from_new_socket(sidecar.udp_port, "john", "1234", realm))
    for _ in range(100):  # until john's authenticated REGISTER is waiting on the webhook
        if webhook.seen:
            break
        await asyncio.sleep(0.02)
    requests_before = await redis.xlen(sidecar.names.requests)
    heartbeats_before = await redis.xlen(sidecar.names.heartbeats)
    uac = await UdpUac.open()
    try:
        shed = await uac.transact(
            sidecar.udp_port, register_request(uac, "jane", realm, call_id="storm-1", cseq=1, expires=3600)
        )
        heartbeat = await uac.transact(
            sidecar.udp_port,
            f"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{uac.port};branch=z9hG4bKstorm2;rport\r\n"
            "From: <sip:fs@127.0.0.1>;tag=s2\r\nTo: <sip:127.0.0.1>\r\nCall-ID: storm-2\r\nCSeq: 1 OPTIONS\r\n"
            "X-FS-Status: open\r\nContent-Length: 0\r\n\r\n",
        )
    finally:
        uac.close()
    assert (shed.status, shed.header("Retry-After")) == (503, "5")
    assert heartbeat.status == 200  # a feature server's check-in is never shed
    assert await redis.xlen(sidecar.names.requests) == requests_before  # nothing for the shed one
    assert await redis.xlen(sidecar.names.heartbeats) == heartbeats_before + 1
    assert [a.status for a in (await slow).answers] == [401, 200]
    webhook.delay_s = 0.0
    flow = await register_from_new_socket(sidecar.udp_port, "jane", "5678", realm)
    assert [a.status for a in flow.answers] == [401, 200]


async def test_replies_cross_processes_by_stream_and_stay_in_process_otherwise(
    sidecars: StartSidecar, hooked_realm: str, redis: Redis
) -> None:
    """Ingest alone in one sidecar, processors in another: every answer travels on replies:<ingest_id>.
    All roles in one sidecar: the processor hands its replies over directly, none touch that stream."""
    realm = hooked_realm
    edge = await sidecars(roles=("ingest",))
    core = await sidecars(roles=("processors", "projections"))
    flow = await register_from_new_socket(edge.udp_port, "john", "1234", realm)
    assert [a.status for a in flow.answers] == [401, 200]
    reply_stream = edge.names.replies(edge.settings.ingest_id)
    assert await redis.xlen(reply_stream) == 2  # the 401 and the 200
    await stop_sidecar(edge)
    await stop_sidecar(core)

    whole = await sidecars()
    flow = await register_from_new_socket(whole.udp_port, "jane", "5678", realm)
    assert [a.status for a in flow.answers] == [401, 200]
    assert await redis.xlen(whole.names.replies(whole.settings.ingest_id)) == 0


# --- 3. replay ------------------------------------------------------------------------------------


async def test_replay_brings_back_the_live_bindings_byte_for_byte(
    sidecars: StartSidecar, hooked_realm: str, redis: Redis, cluster_id: str, mysql_db: str
) -> None:
    realm = hooked_realm
    sidecar = await sidecars(env={"SIDECAR_SNAPSHOT_INTERVAL_S": "3600"})  # the snapshot below is the test's
    flows = await asyncio.gather(
        register_from_new_socket(sidecar.udp_port, "john", "1234", realm, expires=3600),  # granted 45
        register_from_new_socket(sidecar.udp_port, "jane", "5678", realm, expires=20),
    )
    snapshot = await SnapshotTaker(redis, StreamNames(cluster_id), interval_s=3600).snapshot()
    flows.append(await register_from_new_socket(sidecar.udp_port, "joe", "9012", realm, expires=60))
    assert [[a.status for a in f.answers] for f in flows] == [[401, 200]] * 3
    gone = await register_from_new_socket(sidecar.udp_port, "joe", "9012", realm, expires=0)
    assert [a.status for a in gone.answers] == [401, 200]
    # The log before the snapshot is trimmed away: replay has the snapshot and joe's facts after it only.
    names = StreamNames(cluster_id)
    covers_ms, _, covers_seq = snapshot.covers.partition("-")
    await redis.xtrim(names.registrations, minid=f"{covers_ms}-{int(covers_seq) + 1}", approximate=False)
    first_kept = (await redis.xrange(names.registrations, count=1))[0][0].decode()
    assert {b.aor for b in snapshot.bindings if b.aor.endswith(realm)} == {f"john@{realm}", f"jane@{realm}"}
    assert first_kept > snapshot.covers
    live = [f"user:john@{realm}", f"user:jane@{realm}"]
    joe = f"user:joe@{realm}"

    async def projected() -> bool:
        return await redis.exists(*live) == len(live) and not await redis.exists(joe)

    await until(projected, "the bindings of john and jane, and joe's removal")
    before = {
        key: (await redis.get(key), await redis.pttl(key), await redis.zscore("active-user", key)) for key in live
    }
    assert 43_000 <= before[live[0]][1] <= 45_000 and 18_000 <= before[live[1]][1] <= 20_000

    await redis.delete(*live)
    await redis.zrem("active-user", *live)
    result = await asyncio.to_thread(sidecar_cli, base_env(cluster_id, mysql_db), "replay", "registrations")
    assert result.returncode == 0, result.stderr
    assert "events after it; 2 live bindings restored" in result.stdout

    for key in live:
        value, ttl_ms, score = before[key]
        assert await redis.get(key) == value  # the same JSON, byte for byte
        record = json.loads(value)
        ttl_after = await redis.pttl(key)
        remaining_ms = record["expiryTime"] - time.time() * 1000
        # what was left of the grant at the replay (whole seconds, rounded down), never the grant itself
        assert remaining_ms - 2000 <= ttl_after <= remaining_ms + 50, (key, ttl_ms, ttl_after, remaining_ms)
        assert await redis.zscore("active-user", key) == score == record["expiryTime"]
    assert not await redis.exists(joe)
    assert await redis.zscore("active-user", joe) is None


# --- 4. history -----------------------------------------------------------------------------------

STORY = [
    ("RegisterReceived", "without credentials"),
    ("RegisterChallenged", "401 Unauthorized: challenged"),
    ("RegisterReceived", "with credentials of john"),
    ("RegistrationGranted", "200 OK: registered for 45 s (advertised 30 s)"),
    ("Run", "200 OK: refreshed from the cached binding (expires 30 s, not re-authenticated)"),
    ("RegisterReceived", "without credentials"),
    ("RegisterChallenged", "401 Unauthorized: challenged"),
    ("RegisterReceived", "with credentials of john"),
    ("RegistrationRemoved", "200 OK: unregistered"),
]


async def test_history_tells_challenge_grant_cached_refresh_and_unregister(
    sidecars: StartSidecar, hooked_realm: str, redis: Redis, cluster_id: str, mysql_db: str
) -> None:
    realm = hooked_realm
    sidecar = await sidecars()
    port = free_port()
    source = f"127.0.0.1:{port}"
    csv = f"SEQUENTIAL\njohn;{realm};1234;{realm}\n"
    result = await run_sipp(
        "register-auth.xml",
        sidecar.udp_port,
        inf=csv,
        replace={"[final]": "200"},
        extra=["-p", str(port), "-key", "expires", "3600", "-au", "john", "-ap", "1234"],
    )
    assert result.returncode == 0, result.stderr

    async def bound() -> bool:
        return bool(await redis.exists(f"user:john@{realm}"))

    await until(bound, "john's binding")  # the cache answers from the projected binding
    result = await run_sipp(
        "register-expect.xml",
        sidecar.udp_port,
        inf=csv,
        replace={"[final]": "200"},
        extra=["-p", str(port), "-key", "expires", "3600"],
    )
    assert result.returncode == 0, result.stderr  # 200 from the cache: no credentials sent
    result = await run_sipp(
        "unregister.xml", sidecar.udp_port, inf=csv, extra=["-p", str(port), "-au", "john", "-ap", "1234"]
    )
    assert result.returncode == 0, result.stderr

    names = StreamNames(cluster_id)
    aor = f"john@{realm}"

    async def told() -> bool:
        return len(await load_history(redis, names, aor)) >= len(STORY)

    await until(told, "the history of john")
    steps = await load_history(redis, names, aor)
    assert [s["type"] for s in steps] == [kind for kind, _ in STORY]
    for step, (_, text) in zip(steps, STORY, strict=True):
        assert step["source"] == source
        assert text in describe_step(step), describe_step(step)
    shown_times = [describe_step(s)[:23] for s in steps]  # "YYYY-MM-DD HH:MM:SS.mmm", oldest first
    assert shown_times == sorted(shown_times) and all(
        re.fullmatch(r"[\d-]{10} [\d:]{8}\.\d{3}", t) for t in shown_times
    )
    assert [s.get("status") for s in steps] == [None, 401, None, 200, 200, None, 401, None, 200]
    requests = [s for s in steps if s["type"] == "RegisterReceived"]
    assert [s.get("credentials") for s in requests] == [False, True, False, True]
    # A cached refresh is a run (of one here): told in one line, extended by the next identical ones.
    assert steps[4]["cached"] is True and steps[4]["of"] == "RegistrationRefreshed" and steps[4]["count"] == 1
    assert steps[0]["expires"] == 3600 and steps[5]["expires"] == 0
    sbc = sidecar.settings.ingest_id  # each REGISTER names the SBC that received it
    address = f"udp/127.0.0.1:{sidecar.udp_port},tcp/127.0.0.1:{sidecar.tcp_port}"
    assert [(s["sbc"], s["sbc_address"]) for s in requests] == [(sbc, address)] * 4
    assert describe_step(steps[0]).endswith(
        f"REGISTER via {sbc} ({address}) from {source} over udp, expires=3600, without credentials"
    )

    env = base_env(cluster_id, mysql_db)
    plain, as_json = await asyncio.gather(
        asyncio.to_thread(sidecar_cli, env, "history", aor),
        asyncio.to_thread(sidecar_cli, env, "history", aor, "--json"),
    )
    assert plain.returncode == 0 and as_json.returncode == 0, plain.stderr + as_json.stderr
    assert plain.stdout.splitlines() == [describe_step(s) for s in steps]
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == steps
    unknown = await asyncio.to_thread(sidecar_cli, env, "history", f"nobody@{realm}")
    assert unknown.returncode == 1 and unknown.stdout.startswith(f"no history for nobody@{realm}")


# --- 5. two registrar processes, one of them crashing -----------------------------------------------


async def claimed_by(sidecar: Sidecar) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{sidecar.http_port}/metrics") as response:
            metrics = dict(line.split(" ", 1) for line in (await response.text()).splitlines() if line)
    return float(metrics.get(f"sbc_sidecar_consumer_{GROUP_PROCESSORS}_claimed", "0"))


async def registrar_consumers(redis: Redis, names: StreamNames) -> dict[str, int]:
    """The registrar's consumer group on `requests`: its consumers and how many entries each holds unacknowledged."""
    try:
        consumers = await redis.xinfo_consumers(names.requests, GROUP_PROCESSORS)
    except ResponseError:  # the group does not exist yet
        return {}
    return {c["name"].decode() if isinstance(c["name"], bytes) else c["name"]: int(c["pending"]) for c in consumers}


async def test_a_registrar_crash_loses_and_doubles_no_register(
    sidecars: StartSidecar, hooked_realm: str, webhook: AuthWebhook, redis: Redis, names: StreamNames
) -> None:
    realm = hooked_realm
    # Idle claims only after a minute: what is finished by the survivor is taken over because its registrar died.
    env = {"SIDECAR_CLAIM_IDLE_MS": "60000", "SIDECAR_WEBHOOK_TIMEOUT_S": "1", "SIDECAR_BATCH_SIZE": "8"}
    # REGISTERs stay in flight in a registrar long enough to be caught by the crash: each of them, since the
    # registrar decides each REGISTER on its own as soon as its webhook answers (no batch to wait for).
    webhook.delay_s = 0.6
    # The SIP traffic goes to an SBC with only its SIP edge; the doomed sidecar's registrar is the only one
    # deciding until it crashes. A survivor's registrar comes up right after the crash and takes its work over.
    doomed = await sidecars(env=env)
    edge = await sidecars(env=env, roles=("ingest",))

    async def staggered(n: int) -> Flow:
        await asyncio.sleep(n * 0.02)
        return await register_from_new_socket(edge.udp_port, f"u{n:03d}", f"pw{n:03d}", realm)

    flows = asyncio.gather(*(staggered(n) for n in range(MANY_USERS)))

    async def doomed_holds_work() -> bool:
        # REGISTERs waiting on the webhook (0.6 s), not first REGISTERs that commit within milliseconds.
        return len(webhook.seen) >= 10 and sum((await registrar_consumers(redis, names)).values()) >= 5

    await until(doomed_holds_work, "REGISTERs in flight in the doomed registrar")
    [doomed_consumer] = await registrar_consumers(redis, names)
    assert doomed.task is not None
    doomed.task.cancel()  # a crash: nothing in flight is committed
    with pytest.raises(asyncio.CancelledError):
        await doomed.task
    crashed_at = time.monotonic()
    left = (await registrar_consumers(redis, names)).get(doomed_consumer, 0)
    assert left > 0, "the crash left work to take over"
    survivor = await sidecars(env=env, roles=("processors", "projections"))
    done = await flows

    for flow in done:
        assert [a.status for a in flow.answers] == [401, 200], (flow.user, flow.answers)
        assert max(flow.seconds) < TIMER_F_S
    assert await claimed_by(survivor) >= left  # the crashed registrar's entries were taken over ...
    # ... once its liveness key lapsed (3 s), well within the edge's reply deadline (10 s)
    assert time.monotonic() - crashed_at < 10

    async def doomed_left_the_group() -> bool:
        return doomed_consumer not in await registrar_consumers(redis, names)

    await until(doomed_left_the_group, "the dead registrar to leave the group", timeout_s=10)

    keys = [f"user:{f.user}@{realm}" for f in done]

    async def all_bound() -> bool:
        return all(await asyncio.gather(*(redis.exists(k) for k in keys)))

    await until(all_bound, "a binding for every user")
    for flow, key in zip(done, keys, strict=True):
        assert json.loads(await redis.get(key))["proxy"] == f"sip:127.0.0.1:{flow.port}"
    members = [m for m in await redis.zrange("active-user", 0, -1) if m.endswith(f"@{realm}".encode())]
    assert sorted(members) == sorted(k.encode() for k in keys)

    codec = default_codec()
    events = [codec.decode(fields) for _, fields in await redis.xrange(names.registrations)]
    granted = sorted(e.aor for e in events if isinstance(e, RegistrationGranted))
    challenged = sorted(e.aor for e in events if isinstance(e, RegisterChallenged))
    expected = sorted(f"{f.user}@{realm}" for f in done)
    assert granted == expected  # exactly one grant per accepted REGISTER: none lost, none doubled
    assert challenged == expected
    assert await redis.xlen(names.dead) == 0
    pending = await redis.xpending(names.requests, GROUP_PROCESSORS)
    assert pending["pending"] == 0
