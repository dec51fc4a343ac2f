"""The processes under test: the bench webhook and the sidecar, all roles in one process or split.

Split mode runs the roles as separate processes: one ingest (the only SIP listener), `processors`
processor processes (consumer groups share the work) and one projections process. Every process
has its own /health listener; the service is up when all of them answer 200.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from dataclasses import dataclass, field

import aiohttp

from bench.infrastructure import REPO, Tenant, free_port
from bench.processes import Child, ProcessGroup

HEALTH_TIMEOUT_S = 30.0
SIDECAR = REPO / ".venv" / "bin" / "sbc-sidecar"


@dataclass(frozen=True)
class Layout:
    """Which processes run which roles."""

    split: bool = False
    processors: int = 1
    ingests: int = 1
    command: str = str(SIDECAR)

    def processes(self) -> list[tuple[str, str]]:
        """(process name, --roles) for each process to start."""
        if not self.split:
            return [("sidecar", "ingest,processors,projections")]
        ingests = (
            [("ingest", "ingest")]
            if self.ingests == 1
            else [(f"ingest-{i}", "ingest") for i in range(1, self.ingests + 1)]
        )  # one UDP port, SO_REUSEPORT
        return [
            *ingests,
            *[(f"processors-{i}", "processors") for i in range(1, self.processors + 1)],
            ("projections", "projections"),
        ]

    @property
    def mode(self) -> str:
        if not self.split:
            return "one process"
        ingest = "ingest" if self.ingests == 1 else f"{self.ingests} ingests"
        return f"split ({ingest}, {self.processors} processors, projections)"


@dataclass
class RunningService:
    sip_port: int
    children: list[Child] = field(default_factory=list)
    health_urls: list[str] = field(default_factory=list)

    def dead(self) -> list[Child]:
        return [child for child in self.children if not child.running]


async def start_webhook(
    processes: ProcessGroup, tenant: Tenant, *, delay_ms: int = 0, hang: bool = False, name: str = "webhook"
) -> tuple[Child, int]:
    """Starts `python -m bench.webhook` for `tenant`, answering after `delay_ms` (or never, with
    `hang`); returns it and the port it bound."""
    env = {
        **os.environ,
        "BENCH_WEBHOOK_BASIC": f"{tenant.webhook_user}:{tenant.webhook_password}",
        "BENCH_WEBHOOK_SECRET": tenant.webhook_secret,
        "BENCH_USER_PASSWORD": tenant.user_password,
        "BENCH_REALM": tenant.realm,
        "BENCH_WEBHOOK_DELAY_MS": str(delay_ms),
        "BENCH_WEBHOOK_HANG": "1" if hang else "0",
    }
    child = await processes.start(name, [sys.executable, "-m", "bench.webhook"], env=env, cwd=REPO, stdout_pipe=True)
    assert child.process.stdout is not None
    try:
        async with asyncio.timeout(15):
            line = (await child.process.stdout.readline()).decode().split()
    except TimeoutError:
        line = []
    if len(line) != 2 or line[0] != "listening":
        raise RuntimeError(f"the bench webhook did not start:\n{child.log_tail()}")
    return child, int(line[1])


def service_env(base: dict[str, str], *, sip_port: int, http_port: int, ingest_id: str) -> dict[str, str]:
    return {
        **os.environ,
        **base,
        "SIDECAR_SIP_FRONT": "native",
        "SIDECAR_SIP_LISTEN": f"udp:127.0.0.1:{sip_port}",
        "SIDECAR_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "SIDECAR_INGEST_ID": ingest_id,
        "JAMBONES_LOGLEVEL": "warn",
    }


async def start_service(processes: ProcessGroup, layout: Layout, base_env: dict[str, str]) -> RunningService:
    """Starts the sidecar processes of `layout` and waits until every /health answers 200."""
    service = RunningService(sip_port=free_port())
    run_id = secrets.token_hex(3)
    for name, roles in layout.processes():
        http_port = free_port()
        env = service_env(base_env, sip_port=service.sip_port, http_port=http_port, ingest_id=f"bench-{run_id}-{name}")
        env["SBC_SOCKET_PATH"] = f"/tmp/sbc-bench-{run_id}-{name}.sock"
        if layout.ingests > 1:
            env["SIDECAR_SIP_REUSE_PORT"] = "1"
        child = await processes.start(name, [layout.command, "run", "--roles", roles], env=env, cwd=REPO)
        service.children.append(child)
        service.health_urls.append(f"http://127.0.0.1:{http_port}/health")
    await wait_healthy(service)
    return service


async def wait_healthy(service: RunningService, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = list(zip(service.children, service.health_urls, strict=True))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while pending:
            child, url = pending[0]
            if not child.running:
                raise RuntimeError(f"{child.name} exited with {child.process.returncode}:\n{child.log_tail()}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        pending.pop(0)
                        continue
            except (aiohttp.ClientError, TimeoutError):
                pass
            if loop.time() > deadline:
                raise RuntimeError(f"{child.name}: {url} never answered 200:\n{child.log_tail()}")
            await asyncio.sleep(0.05)


async def webhook_counts(port: int) -> dict[str, int]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.get(f"http://127.0.0.1:{port}/stats") as response:
            return {str(k): int(v) for k, v in (await response.json()).items()}
