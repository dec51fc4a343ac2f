"""Two SBCs in two network namespaces sharing one Redis and one MariaDB, and SBC A killed under load.

Each SBC runs the ingest role alone in a namespace of its own (a veth pair to the root namespace, 10.200.k.0/30
addresses of the test's own); the processors and projections run in the root namespace. The test starts a private
redis-server bound to the root ends of the veths, forwards MySQL (the ingest writes `sbc_addresses`) with socat, and
serves the registration webhook itself.

The load: phones (UDP user agents, tests/e2e/sip_phones.py) register and refresh through A, some through B, with
digest authentication; the webhook answers most calls within 0.4 s and some only after the reply deadline, as a slow
customer webhook does. A few phones move from A to B while A lives. A is killed (SIGKILL) while requests of its
phones are waiting on the webhook, both kinds of them, and just before its next heartbeat (it has taken requests
since its last one); its phones get no answer and fail over to B.

What must hold: the story of a moved phone names both SBCs in order (`history`, text and `--json`); every record
(`user:<aor>`) follows the SBC that last registered its phone; a live peer deletes A's reply stream, never before
the deadline of a request of A has passed, and A's edge group and consumers go; every request was decided once, and
none granted after its deadline (`deadline_ms`): those A still held when it died ended as `RequestExpired` or were
granted in time; `sbcs` shows A dead and B live.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from events import (
    Event,
    RegisterReceived,
    RegistrationGranted,
    RequestExpired,
    StreamNames,
    default_codec,
)
from events.streams import GROUP_PROCESSORS, GROUP_PROJECTIONS, edge_group, user_key
from projections.history import load_history
from tests.conftest import MYSQL_PORT, base_env, free_port, sidecar_cli
from tests.e2e import jambonz
from tests.e2e.jambonz import REALM, AuthWebhook, populate
from tests.e2e.sip_phones import Phone, SbcRoute

ROOT = Path(__file__).resolve().parents[2]
SIP_PORT = 5070
# The SBCs' reply deadline (a request's deadline_ms is its arrival plus this): longer than the heartbeat's TTL (3 s),
# so that the deadline, not the TTL, decides when a gone SBC's reply stream may go.
REPLY_TIMEOUT_S = 4.0
PHONES_ON_A, PHONES_ON_B, MOVERS = 120, 40, 5
REFRESH_S = (1.0, 2.0)  # every phone registers again this often: ~100 registrations a second in all
GIVE_UP_S = REPLY_TIMEOUT_S + 0.5  # a phone fails over when a transaction has no answer by then (A's 500 comes first)
FAST_WEBHOOK_S = (0.05, 0.4)
SLOW_WEBHOOK_S = (REPLY_TIMEOUT_S + 0.3, REPLY_TIMEOUT_S + 0.7)  # answered after the request's deadline
SLOW_SHARE = 0.2
HELD_AT_KILL = 3  # A is killed once at least this many of its requests wait on a fast webhook, and as many on a slow


@dataclass(frozen=True)
class Namespace:
    name: str
    root_ip: str  # the root namespace's end of the veth
    ip: str  # the SBC's address, inside the namespace


def sh(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=10)


def netns_usable() -> str | None:
    """None if network namespaces can be made here, else why not."""
    if shutil.which("ip") is None or shutil.which("socat") is None or shutil.which("redis-server") is None:
        return "needs ip, socat and redis-server"
    probe = f"s17p{os.getpid() % 100000}"
    try:
        sh("ip", "netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"ip netns is not permitted here: {getattr(exc, 'stderr', b'') or exc!r}"
    sh("ip", "netns", "del", probe)
    return None


@pytest.fixture
def namespaces() -> Iterator[tuple[Namespace, Namespace]]:
    why = netns_usable()
    if why is not None:
        pytest.skip(why)
    tag = uuid.uuid4().hex[:6]
    subnets = random.sample(range(100, 250), 2)
    made: list[Namespace] = []
    try:
        for label, k in zip("ab", subnets, strict=True):
            ns = Namespace(f"s17{label}{tag}", f"10.200.{k}.1", f"10.200.{k}.2")
            root_end, ns_end = f"v17{label}{tag}", f"w17{label}{tag}"
            sh("ip", "netns", "add", ns.name)
            made.append(ns)
            sh("ip", "link", "add", root_end, "type", "veth", "peer", "name", ns_end)
            sh("ip", "link", "set", ns_end, "netns", ns.name)
            sh("ip", "addr", "add", f"{ns.root_ip}/30", "dev", root_end)
            sh("ip", "link", "set", root_end, "up")
            sh("ip", "-n", ns.name, "addr", "add", f"{ns.ip}/30", "dev", ns_end)
            sh("ip", "-n", ns.name, "link", "set", ns_end, "up")
            sh("ip", "-n", ns.name, "link", "set", "lo", "up")
        yield made[0], made[1]
    finally:
        for ns in made:  # deleting the namespace deletes its veth pair
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False, timeout=10)


class Processes:
    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self, command: list[str], env: dict[str, str] | None = None, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        if log is None:
            process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        else:
            with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
                process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.running.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.running):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.running):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


async def wait_for(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def healthy(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(1)) as answer:
            return answer.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def pings(redis: Redis) -> bool:
    try:
        return bool(await redis.ping())
    except (RedisConnectionError, OSError):
        return False


async def redis_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def entry_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


@dataclass
class SlowWebhook:
    """The webhook's delay per call: most within FAST_WEBHOOK_S, SLOW_SHARE after the deadline; each call noted
    (user, answered at, slow) so the test can kill A while its requests wait on both kinds."""

    calls: list[tuple[str, float, bool]] = field(default_factory=list)

    def delay_for(self, payload: dict[str, object]) -> float:
        slow = random.random() < SLOW_SHARE
        delay_s = random.uniform(*(SLOW_WEBHOOK_S if slow else FAST_WEBHOOK_S))
        self.calls.append((str(payload.get("username")), time.monotonic() + delay_s, slow))
        return delay_s

    def waiting(self, users: set[str]) -> Counter[bool]:
        """Calls of these users still waiting for their answer (with 0.1 s left at least), counted by slowness."""
        soon = time.monotonic() + 0.1
        return Counter(slow for user, answered_at, slow in self.calls if user in users and answered_at > soon)


@dataclass
class Decided:
    """The decision of one request: its answering fact, when decided (occurred_at) and when committed (entry id)."""

    fact: Event
    decided_ms: int
    committed_ms: int


@dataclass
class Audit:
    """Every request of the run (`requests`) with the decisions that answer it (`registrations`, `refreshes`)."""

    requests: dict[str, RegisterReceived]  # entry id → request
    decisions: dict[str, list[Decided]]  # request entry id → the facts that answer it (causation id)

    @classmethod
    async def read(cls, redis: Redis, names: StreamNames) -> Audit:
        codec = default_codec()
        requests: dict[str, RegisterReceived] = {}
        for entry_id, event in await read_stream(redis, names.requests, codec):
            if isinstance(event, RegisterReceived):
                requests[entry_id] = event
        decisions: dict[str, list[Decided]] = {}
        for stream in (names.registrations, names.refreshes):
            for entry_id, event in await read_stream(redis, stream, codec):
                if event.causation_id is None or getattr(event, "request", None) is None:
                    continue  # not the fact that answers a REGISTER (a WebhookFailed, a RegistrationExpired)
                decided_ms = int(event.occurred_at.timestamp() * 1000)
                decisions.setdefault(event.causation_id, []).append(Decided(event, decided_ms, entry_ms(entry_id)))
        return cls(requests, decisions)

    def through(self, sbc: str) -> dict[str, RegisterReceived]:
        return {entry_id: request for entry_id, request in self.requests.items() if request.reply_to == sbc}


async def read_stream(redis: Redis, stream: str, codec: object) -> list[tuple[str, Event]]:
    entries: list[tuple[str, Event]] = []
    start = "-"
    while True:
        batch = await redis.xrange(stream, start, "+", count=2000)
        for raw_id, fields in batch:
            entries.append((raw_id.decode(), codec.decode(fields)))  # type: ignore[attr-defined]
        if len(batch) < 2000:
            return entries
        start = "(" + batch[-1][0].decode()


async def drained(redis: Redis, stream: str, group: str) -> bool:
    """Whether the group has read and acknowledged everything on the stream."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return False
    found = [g for g in groups if g["name"] in (group, group.encode())]
    last = await redis.xrevrange(stream, count=1)
    return bool(found and last) and found[0]["pending"] == 0 and found[0]["last-delivered-id"] == last[0][0]


async def held_by(redis: Redis, names: StreamNames, ingest_id: str) -> list[str]:
    """What of an SBC the consumer groups hold: its edge group on `commands`, consumers named after it in any group
    of the cluster's streams, and their liveness keys."""
    edge = edge_group(ingest_id)
    found = []
    async for key in redis.scan_iter(match=f"{names.prefix}:*", _type="stream"):
        stream = key.decode()
        for group in await redis.xinfo_groups(stream):
            group_name = group["name"].decode()
            if group_name == edge:
                found.append(f"group {group_name} on {stream}")
            for consumer in await redis.xinfo_consumers(stream, group_name):
                if consumer["name"].decode().startswith(f"{edge}-"):
                    found.append(f"consumer {consumer['name'].decode()} of {group_name} on {stream}")
    found += [key.decode() async for key in redis.scan_iter(match=names.consumer_alive(edge, "*"))]
    return found


async def cli(env: dict[str, str], *args: str) -> str:
    """`sbc-sidecar <args>` in a process of its own; its output, once it succeeded."""
    done = await asyncio.to_thread(sidecar_cli, env, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def sbcs_in_story(steps: list[dict[str, object]]) -> list[str]:
    """The SBCs the REGISTERs of a story came through, in story order, repeats folded."""
    named = [str(step["sbc"]) for step in steps if step["type"] == "RegisterReceived" and step.get("sbc")]
    return [sbc for i, sbc in enumerate(named) if i == 0 or named[i - 1] != sbc]


@dataclass
class TwoSbcs:
    """The running system: a private Redis, MySQL forwarded into the namespaces, the processors, SBCs A and B."""

    a_ns: Namespace
    b_ns: Namespace
    redis: Redis
    names: StreamNames
    env: dict[str, str]  # the CLI's settings, from the root namespace
    sbcs: dict[str, subprocess.Popen[bytes]]  # "sbc-a", "sbc-b"

    @property
    def routes(self) -> dict[str, SbcRoute]:
        return {
            "sbc-a": SbcRoute("sbc-a", self.a_ns.ip, SIP_PORT, self.a_ns.root_ip),
            "sbc-b": SbcRoute("sbc-b", self.b_ns.ip, SIP_PORT, self.b_ns.root_ip),
        }

    async def reply_stream_gone(self, sbc: str) -> bool:
        return await self.redis.exists(self.names.replies(sbc)) == 0


@asynccontextmanager
async def two_sbcs(namespaces: tuple[Namespace, Namespace], mysql_db: str, tmp_path: Path) -> AsyncIterator[TwoSbcs]:
    a_ns, b_ns = namespaces
    processes = Processes()
    redis_port, mysql_fwd, http_port = free_port(), free_port(), free_port()
    cluster_id = f"two{uuid.uuid4().hex[:6]}"
    names = StreamNames(cluster_id)
    redis = Redis(host="127.0.0.1", port=redis_port)
    try:
        bind = ["127.0.0.1", a_ns.root_ip, b_ns.root_ip]
        redis_cmd = ["redis-server", "--port", str(redis_port), "--bind", *bind, "--save", "", "--dir", str(tmp_path)]
        processes.start([*redis_cmd, "--protected-mode", "no"])
        await wait_for("the private redis", lambda: pings(redis))
        for ns in (a_ns, b_ns):
            forward = f"TCP-LISTEN:{mysql_fwd},bind={ns.root_ip},fork,reuseaddr"
            processes.start(["socat", forward, f"TCP:127.0.0.1:{MYSQL_PORT}"])

        env = {**os.environ, **base_env(cluster_id, mysql_db)}
        env.update(JAMBONES_REDIS_PORT=str(redis_port), SIDECAR_REDIS_DB="0")
        env.update(SIDECAR_REPLY_TIMEOUT_S=str(REPLY_TIMEOUT_S))
        core_env = {**env, "SIDECAR_HTTP_LISTEN": f"127.0.0.1:{http_port}", "SBC_SOCKET_PATH": str(tmp_path / "p.sock")}
        # The audit reads every request and fact of the run: consumed entries stay for it (120 s, and no count bound).
        core_env["SIDECAR_WORKQUEUE_GRACE_MAX"] = "1000000"
        core_env["SIDECAR_WEBHOOK_TIMEOUT_S"] = str(2 * REPLY_TIMEOUT_S)  # the slow answers come, after the deadline
        cli = [sys.executable, "-m", "runtime.cli", "run"]
        processes.start([*cli, "--roles", "processors,projections"], core_env, tmp_path / "processors.log")
        sbcs: dict[str, subprocess.Popen[bytes]] = {}
        for label, ns in (("a", a_ns), ("b", b_ns)):
            sbc_env = {
                **env,
                "JAMBONES_REDIS_HOST": ns.root_ip,
                "JAMBONES_MYSQL_HOST": ns.root_ip,
                "JAMBONES_MYSQL_PORT": str(mysql_fwd),
                "SIDECAR_INGEST_ID": f"sbc-{label}",
                "SIDECAR_SIP_LISTEN": f"udp:{ns.ip}:{SIP_PORT}",
                "SIDECAR_HTTP_LISTEN": f"{ns.ip}:9090",
                "SBC_SOCKET_PATH": str(tmp_path / f"{label}.sock"),
                # The phones all send from the root end of the veth, as phones behind one NAT address: exempt
                # from the per-source flood guard (200 messages a second), as the bench's loopback is.
                "SIDECAR_SIP_TRUSTED_SOURCES": f"{ns.root_ip}/32",
            }
            command = ["ip", "netns", "exec", ns.name, *cli, "--roles", "ingest"]
            sbcs[f"sbc-{label}"] = processes.start(command, sbc_env, tmp_path / f"sbc-{label}.log")
        await wait_for("the processors", lambda: healthy(f"http://127.0.0.1:{http_port}/health"))
        for label, ns in (("a", a_ns), ("b", b_ns)):
            await wait_for(f"the SBC at {ns.ip}", lambda ns=ns: healthy(f"http://{ns.ip}:9090/health"))

            async def announced(label: str = label, ns: Namespace = ns) -> bool:  # with its bound address
                return f"udp/{ns.ip}:{SIP_PORT}" in str(await redis.hget(names.sbc_details, f"sbc-{label}"))

            await wait_for(f"sbc-{label}'s announcement", announced)
        yield TwoSbcs(a_ns, b_ns, redis, names, env, sbcs)
    finally:
        processes.stop_all()
        await redis.aclose()


@dataclass
class Kill:
    """When A was killed, in Redis's clock: just before the signal, and once it was dead."""

    killed_ms: int
    dead_ms: int
    on_a: list[Phone]  # the phones registering through A then


async def kill_a_under_load(site: TwoSbcs, phones: list[Phone], webhook: SlowWebhook) -> Kill:
    """SIGKILL to A once requests of its phones wait on the webhook, fast and slow ones, and its next heartbeat is
    due: it dies having taken requests for most of a heartbeat interval since its last one (the clean-up's worst
    case)."""

    async def a_about_to_die() -> bool:
        on_a = {phone.user for phone in phones if phone.sbc.name == "sbc-a"}
        waiting = webhook.waiting(on_a)
        if waiting[True] < HELD_AT_KILL or waiting[False] < HELD_AT_KILL:
            return False
        last_heartbeat_ms = await site.redis.zscore(site.names.sbc_seen, "sbc-a")
        return last_heartbeat_ms is not None and 800 <= await redis_ms(site.redis) - last_heartbeat_ms <= 950

    await wait_for("requests of A waiting on the webhook, fast and slow, as its heartbeat is due", a_about_to_die)
    on_a = [phone for phone in phones if phone.sbc.name == "sbc-a"]
    killed_ms = await redis_ms(site.redis)
    site.sbcs["sbc-a"].kill()  # no clean stop: its heartbeat just lapses
    await asyncio.to_thread(site.sbcs["sbc-a"].wait, 5)
    return Kill(killed_ms, await redis_ms(site.redis), on_a)


def check_decisions(audit: Audit, kill: Kill) -> tuple[Counter[str], Counter[str]]:
    """Every request decided once, none granted (or challenged) after its deadline. Returns the outcomes of A's
    requests, all of them and those A held when it died (appended before, committed after)."""
    late: list[str] = []
    outcomes: Counter[str] = Counter()
    held_at_kill: Counter[str] = Counter()
    for entry_id, request in audit.requests.items():
        decisions = audit.decisions.get(entry_id, [])
        assert len(decisions) == 1, (entry_id, request.reply_to, request.aor, decisions)
        [decided] = decisions
        assert request.deadline_ms is not None
        if isinstance(decided.fact, RequestExpired):
            assert decided.decided_ms >= request.deadline_ms, decided
        elif decided.decided_ms >= request.deadline_ms:
            late_ms = decided.decided_ms - request.deadline_ms
            late.append(f"{request.reply_to} {entry_id} {request.aor}: {type(decided.fact).TYPE} {late_ms} ms late")
        if request.reply_to == "sbc-a":
            outcomes[type(decided.fact).TYPE] += 1
            if decided.committed_ms > kill.killed_ms:
                held_at_kill[type(decided.fact).TYPE] += 1
    assert not late, late
    return outcomes, held_at_kill


async def check_records(site: TwoSbcs, phones: list[Phone], addresses: dict[str, str]) -> None:
    """Each `user:<aor>` follows the SBC through which its phone was last registered: B, for every phone now."""
    for phone in phones:
        last = phone.granted[-1]
        record = json.loads(await site.redis.get(user_key(phone.aor)) or b"{}")
        assert record.get("sbcAddress") == addresses[last.sbc], (phone.user, last, record)
        assert record.get("proxy") == f"sip:{last.source[0]}:{last.source[1]}", (phone.user, last, record)
        assert last.sbc == "sbc-b", (phone.user, phone.route_log)


async def check_histories(site: TwoSbcs, phones: list[Phone], told: list[Phone], addresses: dict[str, str]) -> None:
    """Each phone's story names the SBCs it used, in order; `told` phones' through the CLI, text and --json."""
    for phone in phones:
        steps = await load_history(site.redis, site.names, phone.aor)
        used = [sbc for i, sbc in enumerate(phone.route_log) if i == 0 or phone.route_log[i - 1] != sbc]
        if phone.answers["sbc-b timeout"] == 0:  # a phone that went back to A after a B timeout is left out
            assert sbcs_in_story(steps) == used, (phone.user, phone.route_log, phone.answers)
    for phone in told:
        text = await cli(site.env, "history", phone.aor)
        lines = text.splitlines()
        via_a = [i for i, line in enumerate(lines) if f"REGISTER via sbc-a ({addresses['sbc-a']}) from " in line]
        via_b = [i for i, line in enumerate(lines) if f"REGISTER via sbc-b ({addresses['sbc-b']}) from " in line]
        assert via_a and via_b and max(via_a) < min(via_b), text
        as_json = [
            json.loads(line) for line in (await cli(site.env, "history", phone.aor, "--json")).splitlines()
        ]
        assert sbcs_in_story(as_json) == ["sbc-a", "sbc-b"], as_json
        assert {s["sbc_address"] for s in as_json if s.get("sbc")} == {addresses["sbc-a"], addresses["sbc-b"]}
        print(f"history {phone.aor}:\n{text}")


async def test_sbc_a_killed_under_load(
    namespaces: tuple[Namespace, Namespace], mysql_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = {f"p{n:03d}": f"pw{n:03d}" for n in range(PHONES_ON_A + PHONES_ON_B)}
    monkeypatch.setattr(jambonz, "USERS", users)
    slow = SlowWebhook()
    webhook = AuthWebhook(delay_for=slow.delay_for)
    await webhook.start()
    phones: list[Phone] = []
    stop = asyncio.Event()
    load: list[asyncio.Task[None]] = []
    try:
        await populate(mysql_db, webhook.url)
        async with two_sbcs(namespaces, mysql_db, tmp_path) as site:
            redis, names = site.redis, site.names
            held = await held_by(redis, names, "sbc-a")
            assert any(s.startswith("group ") for s in held) and any(":alive:" in s for s in held), held

            # Phones of A (failing over to B) and of B (to A); half of them refresh from the cache (3600 s asked,
            # 45 s granted), half with a fresh digest each time (30 s asked: never answered from the cache).
            for n, user in enumerate(users):
                order = ["sbc-a", "sbc-b"] if n < PHONES_ON_A else ["sbc-b", "sbc-a"]
                routes = [site.routes[o] for o in order]
                phones.append(Phone(user, users[user], REALM, routes, 3600 if n % 2 else 30, GIVE_UP_S))

            async def started(phone: Phone) -> None:
                await asyncio.sleep(random.uniform(0, 2.0))
                await phone.run(stop, REFRESH_S, retry_s=0.3)

            load = [asyncio.create_task(started(phone), name=phone.user) for phone in phones]
            await asyncio.sleep(4.0)
            movers = phones[:MOVERS]
            for phone in movers:  # re-homed while A lives
                phone.move_to("sbc-b")
            await asyncio.sleep(2.0)
            kill = await kill_a_under_load(site, phones, slow)
            await wait_for("A's reply stream deleted", lambda: site.reply_stream_gone("sbc-a"), timeout_s=20)
            deleted_ms = await redis_ms(redis)  # at or after the deletion

            async def all_on_b() -> bool:
                return all(phone.granted and phone.granted[-1].sbc == "sbc-b" for phone in phones)

            await wait_for("every phone registered through B", all_on_b, timeout_s=20)
            stop.set()  # each phone ends with the registration in progress
            _, unfinished = await asyncio.wait(load, timeout=4 * GIVE_UP_S)
            assert not unfinished, [
                (p.user, p.route_log, p.answers) for p in phones if p.user in {t.get_name() for t in unfinished}
            ]
            answered: Counter[str] = sum((phone.answers for phone in phones), Counter())
            # 401 challenges, 200s, and 500 from an SBC for a webhook answer after the deadline; nothing else
            assert {key.split()[1] for key in answered} <= {"200", "401", "500", "timeout"}, answered
            for stream, group in (
                (names.requests, GROUP_PROCESSORS),
                (names.registrations, GROUP_PROJECTIONS),
                (names.refreshes, GROUP_PROJECTIONS),
            ):
                await wait_for(f"{group} caught up on {stream}", lambda s=stream, g=group: drained(redis, s, g))
            await wait_for("A's reply stream gone for good", lambda: site.reply_stream_gone("sbc-a"), timeout_s=5)

            # Every request decided once, none granted after its deadline. A died while requests of its phones
            # waited on the webhook, fast ones and slow ones: the fast were granted in time, the slow (answered
            # after their deadline) recorded as expired.
            audit = await Audit.read(redis, names)
            through_a = audit.through("sbc-a")
            assert through_a and audit.through("sbc-b")
            assert max(entry_ms(entry_id) for entry_id in through_a) <= kill.dead_ms
            outcomes, held_at_kill = check_decisions(audit, kill)
            assert held_at_kill[RegistrationGranted.TYPE] >= 1 and held_at_kill[RequestExpired.TYPE] >= 1, held_at_kill

            # A's reply stream deleted only once the deadline of every request of A had passed; its group gone.
            last_deadline_ms = max(request.deadline_ms or 0 for request in through_a.values())
            assert deleted_ms >= last_deadline_ms, "A's reply stream was deleted before a request of A's deadline"
            assert not await site.reply_stream_gone("sbc-b")
            assert await redis.hexists(names.sbc_cleaned, "sbc-a")
            assert await held_by(redis, names, "sbc-a") == []
            assert await redis.exists(names.sbc_alive("sbc-a")) == 0

            addresses = {request.reply_to: request.sbc_address or "" for request in audit.requests.values()}
            assert site.a_ns.ip in addresses["sbc-a"] and site.b_ns.ip in addresses["sbc-b"], addresses
            await check_records(site, phones, addresses)
            failed_over = next(p for p in kill.on_a if p not in movers and p.answers["sbc-a timeout"])
            await check_histories(site, phones, [movers[0], failed_over], addresses)

            listing = await cli(site.env, "sbcs")
            print(listing)
            lines = listing.splitlines()
            assert lines[0].startswith("sbc-b  live") and f"sip udp/{site.b_ns.ip}:{SIP_PORT}" in lines[0]
            assert lines[1].startswith("sbc-a  dead") and f"sip udp/{site.a_ns.ip}:{SIP_PORT}" in lines[1]
            assert "reply stream and edge group removed" in lines[1]

            a_before_kill = sum(kill.killed_ms - 1000 < entry_ms(entry_id) <= kill.dead_ms for entry_id in through_a)
            print(
                f"answers the phones got: {dict(sorted(answered.items()))}\n"
                f"requests: {len(audit.requests)}, {len(through_a)} through A ({a_before_kill} in its last second); "
                f"A's outcomes {dict(outcomes)}; held by A when killed {dict(held_at_kill)}; A's reply stream "
                f"deleted {deleted_ms - kill.dead_ms} ms after its death, {deleted_ms - last_deadline_ms} ms after "
                f"the last deadline of its requests"
            )
    finally:
        stop.set()
        for task in load:
            task.cancel()
        await asyncio.gather(*load, return_exceptions=True)
        for phone in phones:
            phone.close()
        await webhook.close()
