"""The HTTP listener: `/health` (the truth about this process and what it depends on) and `/metrics`.

`/health` answers 200 `{"status": "ok"}` only when every worker of the process serves and every store it
needs answers: Redis always, MySQL for the roles that use it (the processors). Otherwise 503 with the
reason: `starting` (and the workers not ready yet), `stopping`, or `unavailable` with the failing
dependencies named (`{"status": "unavailable", "failing": ["redis"]}`). `/health?verbose` adds each
dependency's state and round-trip time, each consumer group's lag and pending entries, the dead letters,
and each worker's state. Each request checks the stores anew, each check within `PROBE_TIMEOUT_S`.

`/metrics` is the Prometheus text format: the workers' counters as untyped lines, then the typed
families of `runtime.metrics` (stream lag and pending entries sampled at each scrape).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiomysql
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from events import StreamNames
from runtime.faults import REDIS_FAULTS
from runtime.metrics import Metrics

log = logging.getLogger(__name__)

_PROBE_FAULTS: tuple[type[BaseException], ...] = (*REDIS_FAULTS, OSError, aiomysql.Error)
_READ_FAULTS: tuple[type[BaseException], ...] = (*REDIS_FAULTS, OSError, TimeoutError)

PROBE_TIMEOUT_S = 1.0
STREAM_KINDS = ("requests", "heartbeats", "registrations", "refreshes", "servers", "carriers", "commands")


def _serving(worker: object) -> bool:
    if not worker.ready.is_set():  # type: ignore[attr-defined]
        return False
    healthy = getattr(worker, "is_healthy", None)
    return bool(healthy()) if callable(healthy) else True


@dataclass(frozen=True, slots=True)
class DependencyState:
    name: str
    ok: bool
    latency_ms: float
    error: str | None = None

    def as_json(self) -> dict[str, object]:
        state: dict[str, object] = {"ok": self.ok, "latency_ms": round(self.latency_ms, 2)}
        if self.error:
            state["error"] = self.error
        return state


@dataclass(frozen=True, slots=True)
class GroupState:
    stream: str  # the stream's kind (requests, registrations ...)
    group: str
    lag: int | None  # None when Redis cannot tell (an entry deleted before the group read it)
    pending: int
    consumers: int


class Dependencies:
    """The stores a process needs, checked on demand: Redis, and MySQL when the roles use it."""

    def __init__(
        self,
        redis: Redis,
        names: StreamNames | Sequence[StreamNames],
        mysql: aiomysql.Pool | None = None,
        timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self.redis = redis
        self.partitions = (names,) if isinstance(names, StreamNames) else tuple(names)
        self.names = self.partitions[0]
        self.mysql = mysql
        self.timeout_s = timeout_s

    async def check(self) -> list[DependencyState]:
        probes = [self._probe("redis", self._ping_redis)]
        if self.mysql is not None:
            probes.append(self._probe("mysql", self._ping_mysql))
        return list(await asyncio.gather(*probes))

    async def _probe(self, name: str, ping: Callable[[], object]) -> DependencyState:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                await ping()  # type: ignore[misc]
        except TimeoutError:
            return DependencyState(name, False, (time.perf_counter() - started) * 1000, "no answer in time")
        except _PROBE_FAULTS as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
            return DependencyState(name, False, (time.perf_counter() - started) * 1000, error)
        return DependencyState(name, True, (time.perf_counter() - started) * 1000)

    async def _ping_redis(self) -> None:
        await self.redis.ping()

    async def _ping_mysql(self) -> None:
        pool = self.mysql
        assert pool is not None
        if pool.freesize == 0 and pool.size >= pool.maxsize:
            return  # every connection is in use: MySQL is answering someone; a probe would only queue
        async with pool.acquire() as connection, connection.cursor() as cursor:
            await cursor.execute("SELECT 1")

    async def groups(self) -> tuple[list[GroupState], int]:
        """Every consumer group of the partitions' streams (a partition other than 0 named after the stream's kind:
        `requests:p1`), and the dead-letter stream's length."""
        states: list[GroupState] = []
        async with asyncio.timeout(self.timeout_s):
            for names, kind in ((names, kind) for names in self.partitions for kind in STREAM_KINDS):
                stream = getattr(names, kind, None)
                if not isinstance(stream, str):
                    continue
                try:
                    groups = await self.redis.xinfo_groups(stream)
                except ResponseError:  # no such stream (yet)
                    continue
                for info in groups:
                    name = info["name"]
                    states.append(
                        GroupState(
                            stream=f"{kind}:p{names.partition}" if names.partition else kind,
                            group=name.decode() if isinstance(name, bytes) else str(name),
                            lag=info.get("lag"),
                            pending=int(info.get("pending") or 0),
                            consumers=int(info.get("consumers") or 0),
                        )
                    )
            dead = int(await self.redis.xlen(self.names.dead))
        return states, dead


class HealthServer:
    """A Worker serving `/health` and `/metrics` on SIDECAR_HTTP_LISTEN."""

    name = "http"

    def __init__(
        self,
        host: str,
        port: int,
        workers: Sequence[object],
        metrics: Callable[[], dict[str, float]] | None = None,
        *,
        dependencies: Dependencies | None = None,
        registry: Metrics | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.workers = list(workers)
        self.metrics = metrics
        self.dependencies = dependencies
        self.registry = registry or Metrics()
        self.ready = asyncio.Event()
        self.bound_port: int | None = None
        self._stop = asyncio.Event()
        self._stopping = False
        self._failing: tuple[str, ...] = ()  # what the last check found failing, to log changes once

    def begin_stopping(self) -> None:
        """From now on /health answers 503 (the process is on its way out)."""
        self._stopping = True

    def stop(self) -> None:
        self._stopping = True
        self._stop.set()

    def is_healthy(self) -> tuple[bool, list[str]]:
        """Whether every worker serves (and the process is not stopping), and the names of those that do not."""
        waiting = [getattr(w, "name", type(w).__name__) for w in self.workers if not _serving(w)]
        return (not self._stopping and not waiting), waiting

    async def _health(self, request: web.Request) -> web.Response:
        serving, waiting = self.is_healthy()
        states = await self.dependencies.check() if self.dependencies is not None else []
        failing = [state.name for state in states if not state.ok]
        self._note(failing, states)
        if self._stopping:
            body: dict[str, object] = {"status": "stopping"}
        elif failing:
            body = {"status": "unavailable", "failing": failing}
        elif not serving:
            body = {"status": "starting", "waiting": waiting}
        else:
            body = {"status": "ok"}
        if "verbose" in request.query:
            body.update(await self._details(states, waiting))
        return web.json_response(body, status=200 if body["status"] == "ok" else 503)

    def _note(self, failing: list[str], states: list[DependencyState]) -> None:
        now_failing = tuple(failing)
        if now_failing == self._failing:
            return
        errors = {state.name: state.error for state in states if not state.ok}
        if now_failing:
            log.warning("unhealthy failing=%s errors=%s", ",".join(now_failing), errors)
        else:
            log.info("healthy again recovered=%s", ",".join(self._failing))
        self._failing = now_failing

    async def _details(self, states: list[DependencyState], waiting: list[str]) -> dict[str, object]:
        details: dict[str, object] = {
            "dependencies": {state.name: state.as_json() for state in states},
            "workers": {
                getattr(w, "name", type(w).__name__): ("waiting" if getattr(w, "name", None) in waiting else "serving")
                for w in self.workers
            },
        }
        if self.dependencies is not None and all(state.ok for state in states if state.name == "redis"):
            try:
                groups, dead = await self.dependencies.groups()
            except _READ_FAULTS as exc:
                details["streams"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            else:
                details["streams"] = {
                    f"{g.stream}/{g.group}": {"lag": g.lag, "pending": g.pending, "consumers": g.consumers}
                    for g in groups
                }
                details["dead_entries"] = dead
        return details

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.dependencies is not None:
            try:
                groups, dead = await self.dependencies.groups()
            except _READ_FAULTS as exc:
                log.debug("stream state not sampled error=%s", exc)  # the families keep their last values
            else:
                self.registry.streams_sampled({(g.stream, g.group): (g.lag, g.pending) for g in groups}, dead)
        values = self.metrics() if self.metrics else {}
        return web.Response(text=self.registry.exposition(values), content_type="text/plain")

    async def run(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.bound_port = sockets[0].getsockname()[1] if sockets else self.port
            log.info("http listening address=%s:%s", self.host, self.bound_port)
            self.ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()
