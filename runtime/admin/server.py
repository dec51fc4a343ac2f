"""The admin socket (SPEC 5.1): newline-delimited JSON commands on a Unix socket, one JSON answer each."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
from contextlib import suppress

from runtime.admin.actions import INVALID_COMMAND, AdminActions, JsonObject, failure
from runtime.services import Services, Worker

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024
IDLE_TIMEOUT_S = 300.0
WRITE_TIMEOUT_S = 5.0


def encode_line(answer: JsonObject) -> bytes:
    """One answer as jambonz writes it: compact JSON (as JSON.stringify), then a newline."""
    return json.dumps(answer, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class AdminSocket:
    """A Worker serving the admin actions on `path`.

    A stale socket file left at `path` is removed first; the socket is created with mode 0600
    (bound under a 0177 umask, so it is never reachable by others, not even briefly) and removed
    again on stop. Another kind of file at `path` is left alone and the bind fails.
    """

    name = "admin-socket"

    def __init__(self, path: str, actions: AdminActions, *, idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.path = path
        self.actions = actions
        self.idle_timeout_s = idle_timeout_s
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._clients: set[asyncio.StreamWriter] = set()
        self._inode: int | None = None

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        sock = self._bind()
        try:
            server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE_BYTES)
        except BaseException:
            sock.close()
            self._unlink()
            raise
        log.info("admin socket listening path=%s", self.path)
        self.ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for writer in list(self._clients):
                writer.close()
            with suppress(asyncio.TimeoutError):
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await server.wait_closed()
            self._unlink()
            log.info("admin socket closed path=%s", self.path)

    def _bind(self) -> socket.socket:
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)  # stale, from a previous run
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        previous = os.umask(0o177)
        try:
            sock.bind(self.path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(previous)
        os.chmod(self.path, 0o600)
        self._inode = os.lstat(self.path).st_ino
        sock.setblocking(False)
        return sock

    def _unlink(self) -> None:
        """Removes the socket file if it is still ours (a newer process may have replaced it)."""
        with suppress(FileNotFoundError):
            if self._inode is not None and os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while not self._stop.is_set():
                try:
                    async with asyncio.timeout(self.idle_timeout_s):
                        line = await reader.readline()
                except TimeoutError:
                    break
                except ValueError:  # a line over MAX_LINE_BYTES
                    await self._send(writer, failure(INVALID_COMMAND))
                    break
                if not line.endswith(b"\n"):  # end of input; an unterminated rest is not a command
                    break
                if line.strip():
                    await self._send(writer, await self.actions.respond(line.strip()))
        except (ConnectionError, TimeoutError):  # the client went away, or stopped reading
            pass
        finally:
            self._clients.discard(writer)
            writer.close()
            with suppress(ConnectionError, asyncio.TimeoutError):
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await writer.wait_closed()

    async def _send(self, writer: asyncio.StreamWriter, answer: JsonObject) -> None:
        writer.write(encode_line(answer))
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await writer.drain()


def build(services: Services) -> list[Worker]:
    """The admin socket of this process, on SBC_SOCKET_PATH, acting on the cluster's Redis sets."""
    actions = AdminActions(services.redis, services.names)
    return [AdminSocket(services.settings.socket_path, actions)]
