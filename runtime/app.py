"""Runs the roles of one process: opens connections, starts workers, stops them in order on a signal."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, nullcontext

import aiomysql

from events import StreamNames, default_codec
from runtime.connections import open_http, open_redis, resp_link_settings
from runtime.eventlog import EventLog
from runtime.health import Dependencies, HealthServer
from runtime.metrics import Metrics, TimedHttpClient
from runtime.services import Services, Worker
from runtime.settings import Settings
from runtime.startup import check_redis, open_mysql_checked
from runtime.statsd import StatsdClient

log = logging.getLogger(__name__)

ROLES = ("ingest", "processors", "projections")
STOP_GRACE_S = 3.0


def role_builders() -> dict[str, Callable[[Services], list[Worker]]]:
    import ingest
    import processors
    import projections

    return {"ingest": ingest.build, "processors": processors.build, "projections": projections.build}


def _tune_gc() -> None:
    """Moves what start-up allocated out of the collector's sight and collects young objects less often.

    The hot path allocates many short-lived objects and few cycles; the default thresholds made the
    cyclic collector a visible share of the CPU under load.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def collect_metrics(workers: Sequence[Worker]) -> dict[str, float]:
    """Counters of every worker that keeps them (`metrics()`), prefixed by the worker's name."""
    values: dict[str, float] = {}
    for worker in workers:
        metrics = getattr(worker, "metrics", None)
        if callable(metrics):
            prefix = str(getattr(worker, "metrics_name", worker.name)).replace("-", "_")
            for key, value in metrics().items():
                name = f"{prefix}_{key}"
                values[name] = values.get(name, 0) + value
    return values


async def _sbc_addresses(
    stack: AsyncExitStack, settings: Settings, mysql: aiomysql.Pool | None, ingest_workers: Sequence[Worker]
) -> Worker:
    """The sbc_addresses keeper of the ingest's front, writing through the write pool when there is one."""
    from processors.sbc_addresses import build_keeper

    if settings.mysql_write is not None:
        pool = await open_mysql_checked(stack, settings.mysql_write, "JAMBONES_MYSQL_WRITE")
    else:
        pool = mysql or await open_mysql_checked(stack, settings.mysql, "JAMBONES_MYSQL")
    front = next(f for w in ingest_workers if (f := getattr(w, "front", None)) is not None)
    return build_keeper(
        pool, front, keep_alive_ms=settings.sbc_public_address_keep_alive_ms, dead_sbc_s=settings.dead_sbc_s
    )


async def _wait_stores(services: Services, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        await services.redis.ping()


async def run(
    settings: Settings, roles: Sequence[str] = ROLES, *, stop: asyncio.Event | None = None, tune_gc: bool = False
) -> None:
    """Runs until SIGTERM/SIGINT (or `stop` is set), then stops: ingest first, projections last."""
    from projections.timeseries import open_time_series

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread
                continue
            stack.callback(loop.remove_signal_handler, sig)  # the handler goes with this run
        redis = await stack.enter_async_context(open_redis(settings.redis))
        await check_redis(redis, settings.redis)  # a store that cannot serve is named in one line (exit 2)
        needs_mysql = "processors" in roles
        mysql = await open_mysql_checked(stack, settings.mysql, "JAMBONES_MYSQL") if needs_mysql else None
        # InfluxDB: the alerts and stats (projections), the carrier and gateway alerts (processors)
        needs_http = "projections" in roles or "processors" in roles
        http = await stack.enter_async_context(open_http(settings.http_user_agent)) if needs_http else None
        time_series = await stack.enter_async_context(
            open_time_series(settings, http) if needs_http else nullcontext(None)
        )
        statsd = await stack.enter_async_context(StatsdClient(settings.statsd)) if settings.enable_metrics else None
        metrics = Metrics(statsd)
        # The webhook request names its User-Agent itself; its calls are timed into the metrics.
        webhooks = TimedHttpClient(metrics) if needs_mysql else None
        if webhooks is not None:
            stack.callback(webhooks.close)
        names = StreamNames(settings.eventlog.cluster_id)
        codec = default_codec()
        eventlog = EventLog(redis, codec, names, settings.eventlog, resp_link_settings(settings.redis))
        stack.callback(eventlog.close)
        services = Services(
            settings, redis, mysql, http, codec, names, eventlog, webhooks, metrics=metrics, time_series=time_series
        )
        await _wait_stores(services)
        builders = role_builders()
        staged: list[list[Worker]] = [builders[role](services) for role in ROLES if role in roles]
        if "ingest" in roles:  # the SBC's public addresses in sbc_addresses, from the SIP front's hostport
            staged[0].append(await _sbc_addresses(stack, settings, mysql, staged[0]))
        workers = [w for stage in staged for w in stage]
        health = HealthServer(
            *settings.http_listen,
            workers,
            metrics=lambda: collect_metrics(workers),
            dependencies=Dependencies(redis, services.partitions, mysql),
            registry=metrics,
        )
        log.info("starting roles=%s workers=%s", ",".join(roles), ",".join(w.name for w in workers))
        if tune_gc:
            _tune_gc()
        async with asyncio.TaskGroup() as group:
            tasks = {id(w): group.create_task(w.run(), name=w.name) for w in workers}
            health_task = group.create_task(health.run(), name="http")
            try:
                await stop.wait()
            except asyncio.CancelledError:
                # Cancelled (by the caller, or by the group when a worker crashed): ask every worker to
                # stop too. On Python 3.11 a cancellation can be lost inside redis-py (asyncio.wait_for
                # in its send path); a loop that lost it would otherwise keep the group waiting forever.
                for worker in workers:
                    worker.stop()
                health.stop()
                raise
            log.info("stopping")
            health.begin_stopping()
            for stage in staged:
                for worker in stage:
                    worker.stop()
                pending = [tasks[id(w)] for w in stage]
                if pending:
                    _, late = await asyncio.wait(pending, timeout=STOP_GRACE_S)
                    for task in late:
                        log.warning("worker did not stop in time, cancelling name=%s", task.get_name())
                        task.cancel()
            health.stop()
            await health_task
    log.info("stopped")
