"""A worker whose store fails logs it and tries again; it never ends the process (its TaskGroup would take every
other worker down with it). Seen on a Redis Cluster: the regbot took the leader lock (its key's master answered)
while the master of the `carriers` stream was down, and the append of `RegbotLeaderAcquired` ended the service."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.asyncio import Redis

from events import StreamNames, default_codec
from processors.regbot import Regbot
from runtime.connections import open_mysql
from runtime.eventlog import EventLog
from runtime.resp import LinkSettings
from runtime.settings import Settings
from tests.conftest import base_env, free_port


async def test_regbot_keeps_running_when_its_appends_fail(
    redis: Redis, names: StreamNames, mysql_db: str, cluster_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = {**base_env(cluster_id, mysql_db), "SIDECAR_REGBOT_START_DELAY_MAX_S": "0"}
    settings = Settings.from_env(env)
    # The lock's Redis answers; the event log's lean link goes to a port where nothing listens.
    eventlog = EventLog(redis, default_codec(), names, settings.eventlog, LinkSettings("127.0.0.1", free_port()))
    async with open_mysql(settings.mysql) as mysql:
        regbot = Regbot(settings, redis, mysql, eventlog, clock=lambda: 0.0)
        caplog.set_level(logging.WARNING, logger="processors.regbot.shell")
        task = asyncio.create_task(regbot.run())
        try:
            async with asyncio.timeout(10):
                while not any("regbot pass failed" in r.getMessage() for r in caplog.records):
                    assert not task.done(), task.exception()
                    await asyncio.sleep(0.05)
            assert await redis.get(names.regbot_token) is not None  # it did take the lock
            await asyncio.sleep(0.5)
            assert not task.done()
        finally:
            regbot.stop()
            await asyncio.wait_for(task, 5)  # a clean stop, whose release is tried and logged, not raised
            eventlog.close()
            await redis.delete(names.regbot_token)
