"""The sidecar under test, run in-process on ephemeral loopback ports, and sipp to drive it."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from events import StreamNames
from runtime import app
from runtime.settings import Settings
from tests.conftest import base_env, free_port
from tests.e2e.jambonz import AuthWebhook

SCENARIOS = Path(__file__).parent / "scenarios"
PROJECTION_WAIT_S = 5.0
SIPP = shutil.which("sipp")


async def projected(redis: Redis, key: str, *, gone: bool = False) -> bytes | None:
    """The value of a key the projections write, once written (or once deleted, with `gone`).

    Projections follow the facts asynchronously (SIDECAR_PROJECTION_LINGER_MS), so a key appears
    a few milliseconds after the SIP answer that reported its fact.
    """
    deadline = asyncio.get_running_loop().time() + PROJECTION_WAIT_S
    while True:
        value: bytes | None = await redis.get(key)
        if (value is None) == gone:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{key} was {'still there' if gone else 'never written'} after {PROJECTION_WAIT_S}s")
        await asyncio.sleep(0.01)


@dataclass
class Sidecar:
    settings: Settings
    names: StreamNames
    udp_port: int
    tcp_port: int
    http_port: int
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/health"


async def wait_healthy(url: str, timeout_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{url} never answered 200")
            await asyncio.sleep(0.05)


async def start_sidecar(
    cluster_id: str,
    database: str,
    env: dict[str, str] | None = None,
    listen: str | None = None,
    roles: tuple[str, ...] = app.ROLES,
) -> Sidecar:
    udp_port, tcp_port, http_port = free_port(), free_port(), free_port()
    full_env = base_env(cluster_id, database)
    full_env.update(
        {
            "SIDECAR_SIP_LISTEN": listen or f"udp:127.0.0.1:{udp_port},tcp:127.0.0.1:{tcp_port}",
            "SIDECAR_HTTP_LISTEN": f"127.0.0.1:{http_port}",
            "SIDECAR_INGEST_ID": f"ingest-{os.urandom(3).hex()}",
            "SIDECAR_BLOCK_MS": "200",
        }
    )
    full_env.update(env or {})
    settings = Settings.from_env(full_env)
    sidecar = Sidecar(settings, StreamNames(cluster_id), udp_port, tcp_port, http_port)
    sidecar.task = asyncio.create_task(app.run(settings, roles, stop=sidecar.stop))
    try:
        await wait_healthy(sidecar.health_url)
    except BaseException:
        sidecar.stop.set()
        await asyncio.wait_for(sidecar.task, 10)
        raise
    return sidecar


async def stop_sidecar(sidecar: Sidecar) -> None:
    sidecar.stop.set()
    if sidecar.task is not None:
        await asyncio.wait_for(sidecar.task, 10)


@pytest.fixture
async def sidecar(cluster_id: str, mysql_db: str, redis: Redis) -> AsyncIterator[Sidecar]:
    running = await start_sidecar(cluster_id, mysql_db)
    try:
        yield running
    finally:
        await stop_sidecar(running)


@pytest.fixture
async def webhook() -> AsyncIterator[AuthWebhook]:
    """The SPEC 6 customer auth webhook, a real aiohttp server on an ephemeral port."""
    hook = AuthWebhook()
    await hook.start()
    try:
        yield hook
    finally:
        await hook.close()


@dataclass
class SippResult:
    returncode: int
    stdout: str
    stderr: str
    messages: str


async def run_sipp(
    scenario: str,
    target_port: int,
    *,
    transport: str = "u1",
    calls: int = 1,
    rate: int = 10,
    timeout_s: float = 30.0,
    local_ip: str = "127.0.0.1",
    extra: list[str] | None = None,
    inf: str | None = None,
    replace: dict[str, str] | None = None,
) -> SippResult:
    """Runs one sipp UAC scenario against 127.0.0.1:<target_port>; returns its exit code and trace."""
    if SIPP is None:
        pytest.fail("sipp is not installed (Debian package sip-tester); .ci/run installs it")
    workdir = Path(tempfile.mkdtemp(prefix="sipp-"))
    scenario_path = SCENARIOS / scenario
    if replace:  # sipp substitutes keywords in messages only, not in <recv response="...">
        text = scenario_path.read_text()
        for old, new in replace.items():
            text = text.replace(old, new)
        scenario_path = workdir / scenario
        scenario_path.write_text(text)
    args = [
        SIPP,
        f"127.0.0.1:{target_port}",
        "-sf",
        str(scenario_path),
        "-t",
        transport,
        "-i",
        local_ip,
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-nostdin",
        "-timeout",
        f"{int(timeout_s)}s",
        "-timeout_error",
        "-trace_msg",
        "-message_file",
        str(workdir / "messages.log"),
        "-trace_err",
        "-error_file",
        str(workdir / "errors.log"),
    ]
    if inf:
        inf_path = workdir / "data.csv"
        inf_path.write_text(inf)
        args += ["-inf", str(inf_path)]
    extra = list(extra or [])
    if "-p" not in extra:
        extra += ["-p", str(free_port())]
    args += extra
    process = await asyncio.create_subprocess_exec(
        *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=workdir
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s + 15)
    messages = (
        (workdir / "messages.log").read_text(errors="replace") if (workdir / "messages.log").exists() else ""
    )
    errors = (workdir / "errors.log").read_text(errors="replace") if (workdir / "errors.log").exists() else ""
    shutil.rmtree(workdir, ignore_errors=True)
    assert process.returncode is not None
    return SippResult(
        process.returncode,
        stdout.decode(errors="replace"),
        stderr.decode(errors="replace") + errors,
        messages,
    )


async def udp_exchange(
    port: int, payload: bytes, timeout_s: float = 3.0, source_ip: str = "127.0.0.1"
) -> bytes:
    """Sends one datagram and returns the first answer (in a thread: the service shares this loop)."""
    return await asyncio.to_thread(_udp_exchange, port, payload, timeout_s, source_ip)


def _udp_exchange(port: int, payload: bytes, timeout_s: float, source_ip: str) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source_ip, 0))
        sock.settimeout(timeout_s)
        sock.sendto(payload, ("127.0.0.1", port))
        data, _ = sock.recvfrom(65536)
        return data
