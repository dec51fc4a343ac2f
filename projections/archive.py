"""The history's cold tier: steps older than the hot window move from Redis to MySQL `sidecar_history`.

Redis keeps the last `SIDECAR_HISTORY_HOT_S` (24 h) of each AOR's story; the archive keeps it for the audit window
(`SIDECAR_RETENTION_S`, 7 days), in one table every SBC of the cluster reaches. A move is insert first, remove
second: the steps read from the head of the story's list are upserted by (aor, step id), then exactly those
members are popped, each only if still unchanged at the head (`POP_MOVED`), so a crash between the two leaves a
step in both places (read back once: by step id), never in neither. A run of refreshes is timed by its last
refresh, so a run still growing stays hot; one whose last refresh is older than the window is complete and
moves. Should a run grow between the read and the pop, its new member (same step id, a later time) is not the
one popped: it stays in Redis, and a later move overwrites the archived row with it (the later time wins).
Every SBC may run this at once: inserts are upserts, pops of what is gone are no-ops.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiomysql
from redis.asyncio import Redis
from redis.exceptions import RedisError

from events import StreamNames
from projections.history import with_times
from runtime.connections import open_mysql
from runtime.redis_scripts import Script
from runtime.settings import MysqlSettings

if TYPE_CHECKING:
    from runtime.services import Clock, Services

log = logging.getLogger(__name__)

# Pops the moved members from the head of the story, each only if it is still there unchanged (a run that grew
# meanwhile stays, and a later move overwrites its archived row).
POP_MOVED = Script(
    "history-pop-moved",
    """
local popped = 0
for i = 1, #ARGV do
  if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[i] then break end
  redis.call('LPOP', KEYS[1])
  popped = popped + 1
end
return popped
""",
)

TABLE = "sidecar_history"
PERIOD_S = 60.0  # one round a minute: the hot window is hours, so a minute's lag is nothing
SCAN_COUNT = 200  # keys per SCAN call
MOVE_BATCH = 500  # steps per LRANGE page, multi-row INSERT and pop
TRIM_BATCH = 5000  # rows per DELETE of the archive's retention
QUERY_TIMEOUT_S = 10.0
COLUMNS = "aor, at_ms, step_id, step"


@dataclass(frozen=True, slots=True)
class ArchivedStep:
    """One step of a story with its score: its time in ms (a run's: its last refresh)."""

    aor: str
    at_ms: int
    step_id: str
    step: str  # the JSON of the step, as the history projection wrote it


def _upsert_sql(server_version: str, rows: int) -> str:
    """A multi-row INSERT whose duplicates (same aor and step id) keep the row with the later score.

    MariaDB and MySQL before 8.0.19 name the new row `VALUES(col)`; later MySQL warns about that and wants a
    row alias instead. `step` is assigned before `at_ms`, so it compares with the stored score.
    """
    values = ", ".join(["(%s, %s, %s, %s)"] * rows)
    if "mariadb" in server_version.lower() or _version_tuple(server_version) < (8, 0, 19):
        new_at, new_step, alias = "VALUES(at_ms)", "VALUES(step)", ""
    else:
        new_at, new_step, alias = "new.at_ms", "new.step", " AS new"
    return (
        f"INSERT INTO {TABLE} ({COLUMNS}) VALUES {values}{alias} ON DUPLICATE KEY UPDATE "
        f"step = IF({new_at} > at_ms, {new_step}, step), at_ms = GREATEST(at_ms, {new_at})"
    )


def _version_tuple(server_version: str) -> tuple[int, ...]:
    parts = []
    for part in server_version.split("-", 1)[0].split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


async def insert_steps(pool: aiomysql.Pool, steps: Sequence[ArchivedStep]) -> None:
    """Writes the steps in one statement; a step already archived is kept or replaced by the later score."""
    if not steps:
        return
    args: list[str | int] = []
    for step in steps:
        args += [step.aor, step.at_ms, step.step_id, step.step]
    async with asyncio.timeout(QUERY_TIMEOUT_S), pool.acquire() as connection, connection.cursor() as cursor:
        await cursor.execute(_upsert_sql(connection.get_server_info(), len(steps)), args)


async def trim_archive(pool: aiomysql.Pool, oldest_ms: int, batch: int = TRIM_BATCH) -> int:
    """Deletes the rows scored before `oldest_ms`, `batch` at a time (short locks); returns how many."""
    deleted = 0
    while True:
        async with asyncio.timeout(QUERY_TIMEOUT_S), pool.acquire() as connection, connection.cursor() as cursor:
            await cursor.execute(f"DELETE FROM {TABLE} WHERE at_ms < %s LIMIT %s", (oldest_ms, batch))
            count = int(cursor.rowcount)
        deleted += count
        if count < batch:
            return deleted


async def read_archive(pool: aiomysql.Pool, aor: str, since_ms: int | None = None) -> list[ArchivedStep]:
    """The archived steps of one AOR scored from `since_ms` on (all of them without it).

    No upper bound here: a run is scored by its last refresh, so one that began before a bound may end after it.
    """
    sql = f"SELECT {COLUMNS} FROM {TABLE} WHERE aor = %s"
    args: list[str | int] = [aor]
    if since_ms is not None:
        sql += " AND at_ms >= %s"
        args.append(since_ms)
    async with asyncio.timeout(QUERY_TIMEOUT_S), pool.acquire() as connection, connection.cursor() as cursor:
        await cursor.execute(sql + " ORDER BY at_ms", args)
        rows = await cursor.fetchall()
    return [ArchivedStep(str(a), int(at), str(step_id), _text(step)) for a, at, step_id, step in rows]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


class HistoryArchive:
    """Moves the cold steps of every AOR's history from Redis to MySQL, and trims the archive."""

    def __init__(
        self,
        redis: Redis,
        pool: aiomysql.Pool,
        names: StreamNames | Sequence[StreamNames],
        *,
        hot_s: int,
        retention_s: int,
    ) -> None:
        self.redis = redis
        self.pool = pool
        self.partitions = (names,) if isinstance(names, StreamNames) else tuple(names)  # each partition's histories
        self.hot_s = hot_s
        self.retention_s = retention_s

    async def run_once(self, now_ms: int) -> tuple[int, int]:
        """One round at `now_ms`: (steps moved, archive rows trimmed)."""
        moved = await self.move(now_ms - self.hot_s * 1000)
        trimmed = await trim_archive(self.pool, now_ms - self.retention_s * 1000)
        return moved, trimmed

    async def move(self, cutoff_ms: int) -> int:
        """Moves every step scored before `cutoff_ms`, key by key; returns how many."""
        moved = 0
        for names in self.partitions:
            # scan_iter: on a Redis Cluster it scans every master (a SCAN cursor is one node's)
            keys = self.redis.scan_iter(match=names.history_pattern, count=SCAN_COUNT)
            prefix = names.history("")
            while True:
                async with asyncio.timeout(QUERY_TIMEOUT_S):
                    key = await anext(keys, None)
                if key is None:
                    break
                text = _text(key)
                moved += await self.move_key(text, text[len(prefix) :], cutoff_ms)
        return moved

    async def move_key(self, key: str, aor: str, cutoff_ms: int) -> int:
        moved = 0
        while True:
            async with asyncio.timeout(QUERY_TIMEOUT_S):
                page: list[bytes | str] = await self.redis.lrange(key, 0, MOVE_BATCH - 1)  # type: ignore[misc]
            cold: list[tuple[bytes | str, float]] = []
            for member, score in with_times(page):  # the head of the story, oldest first, up to a hot step
                if score >= cutoff_ms:
                    break
                cold.append((member, score))
            if not cold:
                return moved
            await insert_steps(self.pool, [_archived(aor, member, score) for member, score in cold])
            async with asyncio.timeout(QUERY_TIMEOUT_S):
                await POP_MOVED.run(self.redis, (key,), [_text(member) for member, _ in cold])
            moved += len(cold)
            if len(cold) < MOVE_BATCH:
                return moved


def _archived(aor: str, member: bytes | str, score: float) -> ArchivedStep:
    text = _text(member)
    return ArchivedStep(aor, int(score), str(json.loads(text)["id"]), text)


class HistoryArchiver:
    """A Worker of the projections role: a `HistoryArchive` round every `period_s`.

    It writes through the pool it is given, else opens one with `mysql` (the write settings when configured).
    A failed round (MySQL or Redis away) is logged and retried next period; what was not moved stays in Redis.
    """

    name = "history-archive"

    def __init__(
        self,
        redis: Redis,
        names: StreamNames | Sequence[StreamNames],
        mysql: MysqlSettings,
        *,
        hot_s: int,
        retention_s: int,
        clock: Clock,
        pool: aiomysql.Pool | None = None,
        period_s: float = PERIOD_S,
    ) -> None:
        self.redis, self.mysql, self.pool = redis, mysql, pool
        self.partitions = (names,) if isinstance(names, StreamNames) else tuple(names)
        self.hot_s, self.retention_s, self.clock, self.period_s = hot_s, retention_s, clock, period_s
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self.moved = 0
        self.trimmed = 0
        self.failures = 0

    def stop(self) -> None:
        self._stop.set()

    def metrics(self) -> dict[str, float]:
        return {"moved": self.moved, "trimmed": self.trimmed, "failures": self.failures}

    async def run(self) -> None:
        self.ready.set()
        while not self._stop.is_set():
            try:
                if self.pool is not None:
                    await self._rounds(self.pool)
                else:
                    async with open_mysql(self.mysql) as pool:
                        await self._rounds(pool)
            except (aiomysql.Error, OSError, TimeoutError) as exc:  # the pool could not open: try again later
                self.failures += 1
                log.warning("history archive unavailable error=%s", exc)
                await self._pause()

    async def _rounds(self, pool: aiomysql.Pool) -> None:
        archive = HistoryArchive(self.redis, pool, self.partitions, hot_s=self.hot_s, retention_s=self.retention_s)
        while not self._stop.is_set():
            try:
                moved, trimmed = await archive.run_once(int(self.clock() * 1000))
            except (aiomysql.Error, RedisError, OSError, TimeoutError) as exc:
                self.failures += 1
                log.warning("history archive round failed error=%s", exc)
            else:
                self.moved += moved
                self.trimmed += trimmed
                if moved or trimmed:
                    log.info("history archived steps=%d trimmed=%d", moved, trimmed)
            await self._pause()

    async def _pause(self) -> None:
        try:
            async with asyncio.timeout(self.period_s):
                await self._stop.wait()
        except TimeoutError:
            pass


def build_archiver(services: Services) -> HistoryArchiver:
    """The projections role's archiver: through the write pool when `JAMBONES_MYSQL_WRITE_*` is set, else the read
    pool (the process's own when the processors run here too)."""
    settings = services.settings
    shared = services.mysql if settings.mysql_write is None else None
    return HistoryArchiver(
        services.redis,
        services.partitions,
        settings.mysql_write or settings.mysql,
        hot_s=settings.eventlog.history_hot_s,
        retention_s=settings.eventlog.retention_s,
        clock=services.clock,
        pool=shared,
    )
