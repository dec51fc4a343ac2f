"""`sbc-sidecar run` as a real process: /health turns 200, SIGTERM stops it cleanly within 5 s."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp

from tests.conftest import base_env, free_port


async def health_status(session: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return None


async def test_run_turns_healthy_and_stops_on_sigterm(cluster_id: str, mysql_db: str, redis) -> None:
    http_port = free_port()
    env = {
        **base_env(cluster_id, mysql_db),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SIDECAR_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "SIDECAR_SIP_LISTEN": f"udp:127.0.0.1:{free_port()},tcp:127.0.0.1:{free_port()}",
    }
    process = subprocess.Popen(  # noqa: ASYNC220 - started once; every wait on it runs in a thread
        [sys.executable, "-m", "runtime.cli", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{http_port}/health"
    try:
        statuses: list[int | None] = []
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                status = await health_status(session, url)
                statuses.append(status)
                if status == 200:
                    break
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                await asyncio.sleep(0.05)
        assert statuses[-1] == 200, statuses
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(process.wait, 10)
        elapsed = time.monotonic() - started
        output = process.stdout.read() if process.stdout else ""
        assert returncode == 0, output
        assert elapsed < 5.0, f"took {elapsed:.1f}s to stop"
        assert "stopping" in output and "stopped" in output
        assert "Traceback" not in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
