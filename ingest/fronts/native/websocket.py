"""SIP over WebSocket (RFC 7118): aiohttp serves ws/wss with subprotocol `sip`, one message per frame."""

from __future__ import annotations

import asyncio
import logging
import ssl

from aiohttp import WSMsgType, web

from ingest.fronts.native.dispatch import Dispatcher
from ingest.fronts.native.limits import ConnectionBound
from ingest.fronts.native.transactions import TransactionTable

log = logging.getLogger(__name__)


class WebSocketListener:
    """One ws or wss listening point."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        transport_name: str,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        idle_timeout_s: float,
        max_message_bytes: int,
        bound: ConnectionBound | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.transport_name = transport_name
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.idle_timeout_s = idle_timeout_s
        self.max_message_bytes = max_message_bytes
        self.bound = bound
        self.bound_port = port
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.bound_port = sockets[0].getsockname()[1]

    async def close(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            protocols=("sip",),
            max_msg_size=self.max_message_bytes,
            receive_timeout=self.idle_timeout_s,
            heartbeat=30,
        )
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="SIP over WebSocket only (subprotocol sip)")
        peer_ip = request.remote or ""
        if self.bound is not None and not self.bound.acquire(peer_ip):
            self.dispatcher.stats.connections_refused += 1
            return web.Response(status=503, text="too many connections from this address")
        try:
            return await self._serve_sip(request, ws)
        finally:
            if self.bound is not None:
                self.bound.release(peer_ip)

    async def _serve_sip(self, request: web.Request, ws: web.WebSocketResponse) -> web.StreamResponse:
        await ws.prepare(request)
        if ws.ws_protocol != "sip":
            await ws.close(code=1002, message=b"subprotocol sip required")
            return ws
        peer = request.transport.get_extra_info("peername") if request.transport else ("", 0)
        source = (peer[0], peer[1])
        table = TransactionTable(timer_j_s=0)
        outbox: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)
        self._sockets.add(ws)

        def send(payload: bytes) -> None:
            if ws.closed:
                raise ConnectionError("websocket closed")
            outbox.put_nowait(payload)  # QueueFull past 1000 unsent answers: the peer is not reading

        async def writer() -> None:
            while True:
                payload = await outbox.get()
                await ws.send_str(payload.decode("utf-8", "replace"))

        async with asyncio.TaskGroup() as group:
            writing = group.create_task(writer())
            try:
                async for message in ws:
                    if message.type == WSMsgType.TEXT:
                        data = message.data.encode("utf-8", "surrogateescape")
                    elif message.type == WSMsgType.BINARY:
                        data = message.data
                    else:
                        break
                    self.dispatcher.receive(data, self.transport_name, source, send, table)
            except TimeoutError:
                log.debug("idle websocket closed peer=%s:%s", *source)
            finally:
                self._sockets.discard(ws)
                writing.cancel()
        return ws
