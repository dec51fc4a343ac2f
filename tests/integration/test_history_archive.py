"""The history's cold tier against the real Redis and MariaDB: steps older than the hot window move to MySQL
`sidecar_history` and leave Redis, a run moves once it is complete, a re-run writes nothing twice, `history`
tells archive and Redis as one story within --since/--until, and the archive keeps its retention."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomysql
import pytest
from redis.asyncio import Redis

from events import (
    Event,
    RegisterChallenged,
    RegistrationGranted,
    RegistrationRefreshed,
    RequestSummary,
    StreamNames,
    new_event_id,
)
from projections.archive import ArchivedStep, HistoryArchive, HistoryArchiver, insert_steps, read_archive, trim_archive
from projections.history import HistoryProjection, describe_step, load_history, with_times
from runtime.redis_scripts import scripts_used
from runtime.settings import MysqlSettings, Secret
from tests.conftest import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER, base_env, sidecar_cli

ROOT = Path(__file__).resolve().parents[2]
AOR = "phone@archive.example.com"
T0 = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC)
HOT_S = 24 * 3600
RETENTION_S = 7 * 86400
Scored = list[tuple[bytes, float]]


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def envelope(seconds: float) -> dict[str, object]:
    event_id = new_event_id()
    return {"event_id": event_id, "occurred_at": T0 + timedelta(seconds=seconds), "correlation_id": event_id}


def summary(seconds: float, credentials: bool = False) -> RequestSummary:
    at = (T0 + timedelta(seconds=seconds - 0.002)).isoformat()
    return RequestSummary(
        at=at, transport="udp", expires=3600, credentials=credentials, username="phone" if credentials else None
    )


def source(port: int) -> dict[str, object]:
    return {"aor": AOR, "source_ip": "10.0.0.7", "source_port": port, "call_id": f"c{port}"}


def challenge(seconds: float, port: int) -> RegisterChallenged:
    return RegisterChallenged(**envelope(seconds), **source(port), realm="archive.example.com", nonce="n",
                              request=summary(seconds))  # fmt: skip


def grant(seconds: float, port: int) -> RegistrationGranted:
    return RegistrationGranted(
        **envelope(seconds),
        **source(port),
        contact=f"sip:phone@10.0.0.7:{port}",
        sbc_address="udp/192.0.2.1:5060",
        protocol="udp",
        proxy=f"sip:10.0.0.7:{port}",
        granted_expires_s=3600,
        advertised_expires_s=30,
        expiry_time_ms=0,
        request=summary(seconds, True),
    )


def refresh(seconds: float, port: int) -> RegistrationRefreshed:
    return RegistrationRefreshed(
        **envelope(seconds),
        **source(port),
        advertised_expires_s=30,
        expiry_time_ms=0,
        contact=f"sip:phone@10.0.0.7:{port}",
        request=summary(seconds),
    )


def registration(seconds: float, port: int, refreshes: int, every_s: float = 30) -> list[Event]:
    """A phone registering from a source, then refreshing unchanged (a run)."""
    return [
        challenge(seconds, port),
        grant(seconds + 0.1, port),
        *(refresh(seconds + every_s * n, port) for n in range(1, refreshes + 1)),
    ]


class Projector:
    """The history projection applied to the real Redis, one event at a time, with increasing stream ids."""

    def __init__(self, redis: Redis, names: StreamNames) -> None:
        self.redis, self.projection, self.sequence = redis, HistoryProjection(names, RETENTION_S), 0

    async def __call__(self, events: list[Event]) -> None:
        for event in events:
            self.sequence += 1
            for command in self.projection.commands_for(f"{ms(event.occurred_at)}-{self.sequence}", event):
                for script in scripts_used([command]):
                    await self.redis.execute_command("SCRIPT", "LOAD", script.source)
                await self.redis.execute_command(*command)


@pytest.fixture
async def pool(mysql_db: str) -> AsyncIterator[aiomysql.Pool]:
    pool = await aiomysql.create_pool(
        host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD, db=mysql_db, autocommit=True
    )
    try:
        yield pool
    finally:
        pool.close()
        await pool.wait_closed()


async def rows(pool: aiomysql.Pool) -> list[tuple[str, int, str]]:
    async with pool.acquire() as connection, connection.cursor() as cursor:
        await cursor.execute("SELECT aor, at_ms, step_id FROM sidecar_history ORDER BY at_ms, step_id")
        return [(str(a), int(at), str(step_id)) for a, at, step_id in await cursor.fetchall()]


async def hot(redis: Redis, names: StreamNames) -> Scored:
    return with_times(await redis.lrange(names.history(AOR), 0, -1))  # type: ignore[return-value]


async def story(redis: Redis, names: StreamNames, pool: aiomysql.Pool) -> list[dict[str, object]]:
    archived = [(row.step, float(row.at_ms)) for row in await read_archive(pool, AOR)]
    return await load_history(redis, names, AOR, archived=archived)


def archive(redis: Redis, pool: aiomysql.Pool, names: StreamNames) -> HistoryArchive:
    return HistoryArchive(redis, pool, names, hot_s=HOT_S, retention_s=RETENTION_S)


async def test_steps_older_than_the_hot_window_move_to_mysql_once(
    redis: Redis, names: StreamNames, pool: aiomysql.Pool
) -> None:
    await Projector(redis, names)(registration(0, 5060, 10) + registration(7200, 6000, 5))
    other = StreamNames(names.cluster_id, partition=1)  # another partition's history is not this archive's
    await redis.rpush(other.history(AOR), json.dumps({"id": "1-0", "at": T0.isoformat(), "type": "X", "t": ms(T0)}))
    before = await hot(redis, names)
    whole = await load_history(redis, names, AOR)
    now_ms = ms(T0 + timedelta(hours=25))  # the hot window starts at T0 + 1 h: the first registration is cold
    cutoff_ms = now_ms - HOT_S * 1000

    moved, trimmed = await archive(redis, pool, names).run_once(now_ms)

    cold = [(member, score) for member, score in before if score < cutoff_ms]
    assert moved == len(cold) >= 3 and trimmed == 0
    assert await hot(redis, names) == [(m, s) for m, s in before if s >= cutoff_ms]  # exactly the cold ones left
    assert await rows(pool) == sorted((AOR, int(s), json.loads(m)["id"]) for m, s in cold)
    assert await redis.llen(other.history(AOR)) == 1
    assert await story(redis, names, pool) == whole  # archive and Redis tell the story as Redis told it

    # Again at the same time: nothing left to move. A move cut short after its INSERT (the members back in Redis)
    # writes no row twice and still removes them.
    assert await archive(redis, pool, names).run_once(now_ms) == (0, 0)
    await redis.lpush(names.history(AOR), *reversed([member for member, _ in cold]))
    assert await story(redis, names, pool) == whole  # a step in both places is told once
    assert await archive(redis, pool, names).run_once(now_ms) == (len(cold), 0)
    assert len(await rows(pool)) == len(cold)
    assert await hot(redis, names) == [(m, s) for m, s in before if s >= cutoff_ms]


async def test_a_run_moves_once_complete_with_its_last_count(
    redis: Redis, names: StreamNames, pool: aiomysql.Pool
) -> None:
    project = Projector(redis, names)
    await project(registration(0, 5060, 12, every_s=600))  # refreshes from T0 + 10 min to T0 + 2 h
    runs = [(m, s) for m, s in await hot(redis, names) if json.loads(m)["type"] == "Run"]
    assert len(runs) == 1 and runs[0][1] == ms(T0 + timedelta(hours=2))  # scored by its last refresh
    run_id = json.loads(runs[0][0])["id"]

    # At T0 + 25 h the window starts at T0 + 1 h: the run began before it but still grew after, so it stays.
    first = await redis.llen(names.history(AOR)) - 1  # the REGISTERs, the 401 and the 200: all before T0 + 1 h
    assert await archive(redis, pool, names).run_once(ms(T0 + timedelta(hours=25))) == (first, 0)
    assert [json.loads(m)["id"] for m, _ in await hot(redis, names)] == [run_id]
    await project([refresh(3 * 3600, 5060)])  # it grows: a new member, same id, later score
    [(member, score)] = await hot(redis, names)
    grown = json.loads(member)
    assert score == ms(T0 + timedelta(hours=3)) and grown["id"] == run_id

    # An earlier version of the run in the archive (it grew after a move) gives way to the later one.
    stale = {**grown, "count": 1, "last_at": T0.isoformat()}
    await insert_steps(pool, [ArchivedStep(AOR, ms(T0 + timedelta(minutes=10)), run_id, json.dumps(stale))])
    assert await archive(redis, pool, names).run_once(ms(T0 + timedelta(hours=26))) == (0, 0)
    assert await archive(redis, pool, names).run_once(ms(T0 + timedelta(hours=27, seconds=1))) == (1, 0)
    assert await redis.exists(names.history(AOR)) == 0
    archived = {row.step_id: json.loads(row.step) for row in await read_archive(pool, AOR)}
    assert archived[run_id] == grown and len(archived) == first + 1
    # An older version arriving late (a peer's move of a run read before it grew) changes nothing.
    await insert_steps(pool, [ArchivedStep(AOR, ms(T0 + timedelta(minutes=10)), run_id, json.dumps(stale))])
    assert {row.step_id: json.loads(row.step) for row in await read_archive(pool, AOR)}[run_id] == grown


async def test_archive_retention_deletes_old_rows_in_batches(
    redis: Redis, names: StreamNames, pool: aiomysql.Pool
) -> None:
    old = [ArchivedStep(AOR, ms(T0) + n, f"{ms(T0) + n}-0", json.dumps({"id": n})) for n in range(11)]
    kept = [ArchivedStep(AOR, ms(T0 + timedelta(days=2)), "2-0", json.dumps({"id": "2-0"}))]
    await insert_steps(pool, old + kept)
    assert await trim_archive(pool, ms(T0 + timedelta(days=1)), batch=3) == 11
    assert [row[2] for row in await rows(pool)] == ["2-0"]
    # The worker's round trims to the retention window (7 days) with the clock it is given.
    await insert_steps(pool, old)
    now_ms = ms(T0 + timedelta(days=7, hours=1))
    assert await archive(redis, pool, names).run_once(now_ms) == (0, 11)
    assert [row[2] for row in await rows(pool)] == ["2-0"]


async def test_the_archiver_worker_runs_rounds_with_its_clock(
    redis: Redis, names: StreamNames, pool: aiomysql.Pool, mysql_db: str
) -> None:
    await Projector(redis, names)(registration(0, 5060, 2))
    settings = MysqlSettings(host=MYSQL_HOST, user=MYSQL_USER, password=Secret(MYSQL_PASSWORD), database=mysql_db)
    clock = (T0 + timedelta(days=2)).timestamp
    worker = HistoryArchiver(redis, names, settings, hot_s=HOT_S, retention_s=RETENTION_S, clock=clock, period_s=0.05)
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(500):  # within 10 s: the first round moves everything (the clock is two days on)
            if not await redis.exists(names.history(AOR)):
                break
            await asyncio.sleep(0.02)
    finally:
        worker.stop()
        await task
    assert await redis.exists(names.history(AOR)) == 0
    assert worker.metrics()["moved"] == len(await rows(pool)) >= 3 and worker.metrics()["failures"] == 0


async def test_history_tells_archive_and_redis_as_one_story_within_bounds(
    redis: Redis, names: StreamNames, pool: aiomysql.Pool, cluster_id: str, mysql_db: str
) -> None:
    await Projector(redis, names)(registration(0, 5060, 3) + registration(7200, 6000, 3) + registration(14400, 7000, 3))
    whole = await load_history(redis, names, AOR)
    await archive(redis, pool, names).run_once(ms(T0 + timedelta(hours=27)))  # the first two are cold now
    assert 0 < await redis.llen(names.history(AOR)) < len(whole)
    env = base_env(cluster_id, mysql_db)

    told = await asyncio.to_thread(sidecar_cli, env, "history", AOR)
    assert told.returncode == 0, told.stderr
    assert told.stdout.splitlines() == [describe_step(step) for step in whole]
    assert told.stderr == ""

    as_json = await asyncio.to_thread(sidecar_cli, env, "history", AOR, "--json")
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == whole

    # The middle registration only: it begins in the archive (its 401 and 200) and its run ends there too.
    since, until = (T0 + timedelta(hours=1)).isoformat(), (T0 + timedelta(hours=3)).isoformat()
    bounded = await asyncio.to_thread(sidecar_cli, env, "history", AOR, "--since", since, "--until", until, "--json")
    assert bounded.returncode == 0, bounded.stderr
    middle = [step for step in whole if "6000" in str(step.get("source", ""))]
    assert [json.loads(line) for line in bounded.stdout.splitlines()] == middle and len(middle) >= 4
    # Across the boundary of the tiers: from the middle registration to the end, archive first, then Redis.
    tail = await asyncio.to_thread(sidecar_cli, env, "history", AOR, "--since", since)
    assert tail.stdout.splitlines() == [describe_step(s) for s in whole if "5060" not in str(s.get("source", ""))]
    empty = await asyncio.to_thread(sidecar_cli, env, "history", AOR, "--until", (T0 - timedelta(hours=1)).isoformat())
    assert empty.returncode == 1 and empty.stdout.startswith(f"no history for {AOR} from the start to 2026-12-01")
    bad = await asyncio.to_thread(sidecar_cli, env, "history", AOR, "--until", "tomorrow")
    assert bad.returncode == 2 and "--until 'tomorrow'" in bad.stderr

    # With Redis-only settings: the hot part, and one line on stderr saying the archive was not read.
    redis_only = {k: v for k, v in env.items() if not k.startswith("JAMBONES_MYSQL")}
    hot_only = await asyncio.to_thread(sidecar_cli, redis_only, "history", AOR)
    assert hot_only.returncode == 0, hot_only.stderr
    assert hot_only.stdout.splitlines() == [describe_step(s) for s in whole if "7000" in str(s.get("source", ""))]
    assert len(hot_only.stderr.splitlines()) == 1 and "archive was not read" in hot_only.stderr
