"""Two SBCs in two network namespaces sharing one Redis: a phone registers through A, then through B; A is killed;
a live peer deletes A's reply stream once the reply deadline has passed, and `sbcs` shows A dead and B live.

Each SBC runs the ingest role alone in a namespace of its own (a veth pair to the root namespace, 10.200.k.0/30
addresses of the test's own); the processors run in the root namespace. The test starts a private redis-server
bound to the root ends of the veths, and forwards MySQL (the ingest writes `sbc_addresses`) with socat.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as redis_sync

from events import StreamNames
from tests.conftest import MYSQL_PORT, base_env, free_port

ROOT = Path(__file__).resolve().parents[2]
REPLY_TIMEOUT_S = 2.0
SIP_PORT = 5070


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


def wait_for(what: str, check: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (the test's own address)
            return bool(response.status == 200)
    except OSError:
        return False


def register(source_ip: str, target_ip: str) -> str:
    """A REGISTER without credentials from the phone; returns the answer's status line."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source_ip, 0))
        port = sock.getsockname()[1]
        call_id = uuid.uuid4().hex
        message = (
            f"REGISTER sip:sip.two-sbcs.test SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {source_ip}:{port};branch=z9hG4bK{uuid.uuid4().hex[:10]};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:phone@sip.two-sbcs.test>;tag={uuid.uuid4().hex[:8]}\r\n"
            "To: <sip:phone@sip.two-sbcs.test>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: <sip:phone@{source_ip}:{port}>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n"
        )
        sock.settimeout(5)
        sock.sendto(message.encode(), (target_ip, SIP_PORT))
        data, _ = sock.recvfrom(65536)
        return data.split(b"\r\n", 1)[0].decode()


def test_a_dead_sbcs_reply_stream_is_deleted_after_the_reply_deadline(
    namespaces: tuple[Namespace, Namespace], mysql_db: str, tmp_path: Path
) -> None:
    a_ns, b_ns = namespaces
    processes = Processes()
    redis_port, mysql_fwd = free_port(), free_port()
    cluster_id = f"two{uuid.uuid4().hex[:6]}"
    names = StreamNames(cluster_id)
    redis: redis_sync.Redis | None = None
    try:
        bind = ["127.0.0.1", a_ns.root_ip, b_ns.root_ip]
        redis_cmd = ["redis-server", "--port", str(redis_port), "--bind", *bind, "--save", "", "--dir", str(tmp_path)]
        redis_cmd += ["--protected-mode", "no"]
        processes.start(redis_cmd)
        redis = redis_sync.Redis(host="127.0.0.1", port=redis_port)
        wait_for("the private redis", lambda: _pings(redis))
        for ns in (a_ns, b_ns):
            forward = f"TCP-LISTEN:{mysql_fwd},bind={ns.root_ip},fork,reuseaddr"
            processes.start(["socat", forward, f"TCP:127.0.0.1:{MYSQL_PORT}"])

        env = {**os.environ, **base_env(cluster_id, mysql_db)}
        env.update(
            JAMBONES_REDIS_PORT=str(redis_port),
            SIDECAR_REDIS_DB="0",
            SIDECAR_REPLY_TIMEOUT_S=str(REPLY_TIMEOUT_S),
        )
        http_port = free_port()
        core_env = {**env, "SIDECAR_HTTP_LISTEN": f"127.0.0.1:{http_port}", "SBC_SOCKET_PATH": str(tmp_path / "p.sock")}
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
            }
            command = ["ip", "netns", "exec", ns.name, *cli, "--roles", "ingest"]
            sbcs[label] = processes.start(command, sbc_env, tmp_path / f"sbc-{label}.log")
        wait_for("the processors", lambda: healthy(f"http://127.0.0.1:{http_port}/health"))
        for ns in (a_ns, b_ns):
            wait_for(f"the SBC at {ns.ip}", lambda ns=ns: healthy(f"http://{ns.ip}:9090/health"))
        for label, ns in (("a", a_ns), ("b", b_ns)):  # each has announced itself with its bound address
            wait_for(
                f"sbc-{label}'s announcement",
                lambda label=label, ns=ns: (
                    f"udp/{ns.ip}:{SIP_PORT}" in str(redis.hget(names.sbc_details, f"sbc-{label}"))
                ),
            )

        # The phone registers through A, then moves to B; the processors answer each through its SBC's stream.
        assert register(a_ns.root_ip, a_ns.ip).startswith("SIP/2.0 ")
        assert register(b_ns.root_ip, b_ns.ip).startswith("SIP/2.0 ")
        assert redis.exists(names.replies("sbc-a")) == 1 and redis.exists(names.replies("sbc-b")) == 1

        sbcs["a"].kill()  # no clean stop: its heartbeat just lapses
        sbcs["a"].wait(timeout=5)
        killed = time.monotonic()
        wait_for("A's reply stream deleted", lambda: redis.exists(names.replies("sbc-a")) == 0, timeout_s=20)
        assert time.monotonic() - killed >= REPLY_TIMEOUT_S  # never before the reply deadline
        assert redis.exists(names.replies("sbc-b")) == 1
        assert redis.hexists(names.sbc_cleaned, "sbc-a")

        listing = subprocess.run(
            [*cli[:-1], "sbcs"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
        )
        assert listing.returncode == 0, listing.stderr
        print(listing.stdout)
        lines = listing.stdout.splitlines()
        assert lines[0].startswith("sbc-b  live") and f"sip udp/{b_ns.ip}:{SIP_PORT}" in lines[0]
        assert lines[1].startswith("sbc-a  dead") and f"sip udp/{a_ns.ip}:{SIP_PORT}" in lines[1]
        assert "reply stream and edge group removed" in lines[1]
    finally:
        processes.stop_all()
        if redis is not None:
            redis.close()


def _pings(redis: redis_sync.Redis) -> bool:
    try:
        return bool(redis.ping())
    except redis_sync.ConnectionError:
        return False
