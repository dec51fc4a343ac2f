"""Ingest's appends when Redis is not there: an append that surely was not stored (no connection could be made)
is sent again while its request waits, so a Redis restarting for a second costs the phone a moment, not a 500."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis as redis_sync
from redis.asyncio import Redis

from events import RegisterChallenged, StreamNames, default_codec, stamp
from runtime.errors import NotStored
from runtime.eventlog import Appender, EventLog
from runtime.resp import LinkSettings
from runtime.settings import EventLogSettings
from tests.conftest import free_port

REDIS_SERVER = shutil.which("redis-server")


def challenge() -> RegisterChallenged:
    return RegisterChallenged(
        **stamp(), aor="a@example.com", realm="example.com", nonce="n", source_ip="127.0.0.1", source_port=5060,
        call_id="c",
    )  # fmt: skip


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    assert REDIS_SERVER is not None
    command = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            redis_sync.Redis(port=port, socket_connect_timeout=0.2).ping()
            return process
        except redis_sync.ConnectionError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.02)


async def test_an_append_made_while_redis_is_away_is_sent_again_once_it_is_back(tmp_path: Path) -> None:
    port = free_port()
    names = StreamNames("retry")
    client = Redis(port=port)
    eventlog = EventLog(client, default_codec(), names, EventLogSettings("retry"), LinkSettings("127.0.0.1", port))
    appender = Appender(eventlog)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    appender.submit(names.requests, challenge(), waiter)
    await asyncio.sleep(0.2)  # refused: nothing listens there yet
    assert appender.retried == 1 and not waiter.done()
    process = await asyncio.to_thread(start_redis, port, tmp_path)
    try:
        deadline = time.monotonic() + 3
        while await client.xlen(names.requests) == 0:
            assert time.monotonic() < deadline, "the append was not sent again"
            await asyncio.sleep(0.05)
        assert not waiter.done()  # stored: its request's reply will resolve it
        assert await client.xlen(names.requests) == 1  # once
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 10)
    # Redis away for good: sent again after 0.25, 0.5, 1 and 2 s, then the request gets its fault (a 500).
    lost = loop.create_future()
    started = time.monotonic()
    appender.submit(names.requests, challenge(), lost)
    with pytest.raises(NotStored, match="cannot connect"):
        await asyncio.wait_for(lost, 8)
    assert 3.75 <= time.monotonic() - started < 6
    assert appender.retried == 1 + 4
    await appender.close()
    eventlog.close()
    await client.aclose()
