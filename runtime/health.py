"""The HTTP listener: GET /health is 200 once every worker of the process is ready, 503 otherwise."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from aiohttp import web

log = logging.getLogger(__name__)


def _serving(worker: object) -> bool:
    if not worker.ready.is_set():  # type: ignore[attr-defined]
        return False
    healthy = getattr(worker, "is_healthy", None)
    return bool(healthy()) if callable(healthy) else True


class HealthServer:
    """A Worker serving `/health` (and `/metrics` text counters) on SIDECAR_HTTP_LISTEN."""

    name = "http"

    def __init__(
        self,
        host: str,
        port: int,
        workers: Sequence[object],
        metrics: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.workers = list(workers)
        self.metrics = metrics
        self.ready = asyncio.Event()
        self.bound_port: int | None = None
        self._stop = asyncio.Event()
        self._stopping = False

    def begin_stopping(self) -> None:
        """From now on /health answers 503 (the process is on its way out)."""
        self._stopping = True

    def stop(self) -> None:
        self._stopping = True
        self._stop.set()

    def is_healthy(self) -> tuple[bool, list[str]]:
        waiting = [getattr(w, "name", type(w).__name__) for w in self.workers if not _serving(w)]
        return (not self._stopping and not waiting), waiting

    async def _health(self, request: web.Request) -> web.Response:
        healthy, waiting = self.is_healthy()
        if healthy:
            return web.json_response({"status": "ok"})
        status = "stopping" if self._stopping else "starting"
        return web.json_response({"status": status, "waiting": waiting}, status=503)

    async def _metrics(self, request: web.Request) -> web.Response:
        values = self.metrics() if self.metrics else {}
        lines = [f"sbc_sidecar_{key} {value}" for key, value in sorted(values.items())]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

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
