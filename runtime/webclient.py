"""A lean HTTP/1.1 client for the registration webhook: pooled keep-alive connections, nothing else.

The webhook is called once per registration, on the request path. aiohttp's client costs ~290 µs of
CPU per call on the bench machine; this one ~50 µs, because it does only what a webhook call needs:
one request written in one call, a response read by Content-Length, chunked coding or connection
close, redirects followed as fetch follows them, connections kept per origin and reused. Deadlines
are the caller's (`asyncio.timeout`). Anything unexpected on the wire is an `HttpError`; a pooled
connection the server closed meanwhile is retried once on a fresh one, before any answer was read.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ssl
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, quote, unquote, urljoin, urlsplit

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
MAX_REDIRECTS = 20
IDLE_TIMEOUT_S = 15.0
# Idle keep-alive connections kept per origin: as many as the calls one account may have in flight
# (SIDECAR_WEBHOOK_MAX_CONCURRENCY's default), so a webhook that takes 250 ms at 800 calls/s (~200 at once)
# reuses its connections instead of opening and closing dozens a second.
MAX_IDLE_PER_ORIGIN = 400
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"  # reserved characters and '%': left as they are


class HttpError(Exception):
    """The server could not be reached, or what came back was not a usable HTTP/1.x response."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # names lower-case; repeated headers joined with ", "
    body: bytes
    url: str  # after redirects


@dataclass(frozen=True, slots=True)
class _Target:
    origin: tuple[str, str, int]  # scheme, host, port
    host_header: str
    path: str
    basic: str | None  # Basic credentials carried in the URL, if any


def _target(url: str) -> _Target:
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise HttpError(f"unusable URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise HttpError("unusable URL: only absolute http and https URLs can be called")
    default_port = 443 if scheme == "https" else 80
    port = port or default_port
    host = parts.hostname
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise HttpError("unusable URL: host name") from exc
    shown_host = f"[{host}]" if ":" in host else host
    host_header = shown_host if port == default_port else f"{shown_host}:{port}"
    path = quote(parts.path or "/", safe=_URL_SAFE)  # spaces and non-ASCII escaped, escapes kept
    if parts.query:
        path = f"{path}?{quote(parts.query, safe=_URL_SAFE)}"
    basic = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        basic = "Basic " + base64.b64encode(pair.encode()).decode()
    return _Target((scheme, host, port), host_header, path, basic)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; reads one response at a time."""

    def __init__(self, origin: tuple[str, str, int]) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.idle_since = 0.0
        self.received_any = False
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (the loop sets TCP_NODELAY itself)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.received_any = True
        self._wake()

    def eof_received(self) -> bool | None:
        self.closed = True
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def more(self) -> None:
        """Waits until more bytes arrived or the connection closed."""
        if self.closed:
            raise HttpError("connection closed before the response was complete")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def read_head(self) -> tuple[int, str, dict[str, str]]:
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self.buffer) > MAX_HEADER_BYTES:
                raise HttpError("response header too large")
            if self.closed:
                raise HttpError("connection closed before a response")
            await self.more()
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + 4]
        status_line, _, rest = head.partition("\r\n")
        version, _, status_rest = status_line.partition(" ")
        code, _, _reason = status_rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise HttpError("not an HTTP/1.x response")
        headers: dict[str, str] = {}
        for line in rest.split("\r\n") if rest else ():
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HttpError("malformed response header")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return int(code), version, headers

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self.more()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            if len(self.buffer) > MAX_HEADER_BYTES:
                raise HttpError("chunk header too long")
            await self.more()

    async def read_chunked(self, limit: int) -> bytes:
        body = bytearray()
        while True:
            size_text = (await self.read_line()).split(b";", 1)[0].strip()
            if not size_text or not _HEX_DIGITS.issuperset(size_text):  # int() would take "-1", "0x1f", "1_0"
                raise HttpError("malformed chunk size")
            size = int(size_text, 16)
            if size == 0:
                while await self.read_line():  # trailers, up to the empty line
                    pass
                return bytes(body)
            if len(body) + size > limit:
                raise HttpError("response body too large")
            body += await self.read_exactly(size)
            if await self.read_line():
                raise HttpError("malformed chunk end")

    async def read_to_close(self, limit: int) -> bytes:
        while not self.closed:
            if len(self.buffer) > limit:
                raise HttpError("response body too large")
            await self.more()
        if len(self.buffer) > limit:  # what arrived together with the close
            raise HttpError("response body too large")
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


class HttpClient:
    """Keep-alive connections per origin, shared by every call of the process."""

    def __init__(
        self,
        *,
        user_agent: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout_s: float = 5.0,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.user_agent = user_agent
        self._ssl = ssl_context
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._idle: dict[tuple[str, str, int], collections.deque[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._targets: dict[str, _Target] = {}
        self.connections_opened = 0

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        for connection in self._busy:
            connection.close()
        self._busy.clear()

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        max_body: int = MAX_BODY_BYTES,
    ) -> HttpResponse:
        """One call, redirects followed (301/302 turn a POST into a GET, 303 anything; 307/308 keep it).

        As fetch does, a redirect to another origin drops the Authorization header: the webhook's
        Basic credentials are for the server they were configured for.
        """
        method = method.upper()
        headers = dict(headers or {})
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._exchange(method, url, headers, body, max_body)
            location = response.headers.get("location")
            if response.status not in REDIRECTS or not location:
                return response
            origin = self._target(url).origin
            url = urljoin(url, location)
            if self._target(url).origin != origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                if method != "HEAD":
                    method = "GET"
                body = None
                headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        raise HttpError(f"more than {MAX_REDIRECTS} redirects")

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            target = _target(url)
            if len(self._targets) >= 1024:
                self._targets.clear()
            self._targets[url] = target
        return target

    async def _exchange(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None, max_body: int
    ) -> HttpResponse:
        target = self._target(url)
        request = self._serialize(method, target, headers, body)
        connection, reused = await self._connection(target.origin)
        self._busy.add(connection)
        try:
            try:
                return await self._roundtrip(connection, request, method, url, max_body)
            except HttpError:
                if not (reused and not connection.received_any):
                    raise
            # The server closed a pooled connection while it idled: once more on a fresh one.
            connection.close()
            self._busy.discard(connection)
            connection = await self._open(target.origin)
            self._busy.add(connection)
            return await self._roundtrip(connection, request, method, url, max_body)
        finally:
            self._busy.discard(connection)

    async def _roundtrip(
        self, connection: _Connection, request: bytes, method: str, url: str, max_body: int
    ) -> HttpResponse:
        assert connection.transport is not None
        connection.received_any = False
        try:
            connection.transport.write(request)
            while True:
                status, version, headers = await connection.read_head()
                if not 100 <= status < 200 or status == 101:
                    break  # an interim 1xx answer is skipped
            body = await self._body(connection, method, status, headers, max_body)
        except BaseException:
            connection.close()  # cancelled or broken mid-response: the connection's state is unknown
            raise
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep = not connection.closed and "close" not in tokens and (version != "HTTP/1.0" or "keep-alive" in tokens)
        if keep and not connection.buffer:
            self._release(connection)
        else:
            connection.close()
        encoding = headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "deflate"):
            try:
                body = zlib.decompress(body, 47)  # 47: gzip or zlib header, detected
            except zlib.error as exc:
                raise HttpError(f"undecodable {encoding} body") from exc
        return HttpResponse(status, headers, body, url)

    @staticmethod
    async def _body(connection: _Connection, method: str, status: int, headers: dict[str, str], limit: int) -> bytes:
        if method == "HEAD" or status in (204, 304):
            return b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await connection.read_chunked(limit)
        length_text = headers.get("content-length")
        if length_text is not None:
            if not (length_text.isascii() and length_text.isdigit()):  # "²" is a Latin-1 digit, not a length
                raise HttpError("malformed Content-Length")
            length = int(length_text)
            if length > limit:
                raise HttpError("response body too large")
            return await connection.read_exactly(length)
        return await connection.read_to_close(limit)

    def _serialize(self, method: str, target: _Target, headers: Mapping[str, str], body: bytes | None) -> bytes:
        lines = [f"{method} {target.path} HTTP/1.1", f"Host: {target.host_header}"]
        names = set()
        for name, value in headers.items():
            if any(c in name or c in value for c in "\r\n"):
                raise HttpError("a header holds a line break")
            lines.append(f"{name}: {value}")
            names.add(name.lower())
        if "authorization" not in names and target.basic is not None:
            lines.append(f"Authorization: {target.basic}")
        if "user-agent" not in names and self.user_agent:
            lines.append(f"User-Agent: {self.user_agent}")
        if "accept" not in names:
            lines.append("Accept: */*")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        try:
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError as exc:
            raise HttpError("a header is not Latin-1 text") from exc
        return head + body if body else head

    async def _connection(self, origin: tuple[str, str, int]) -> tuple[_Connection, bool]:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.closed or connection.buffer or now - connection.idle_since > self.idle_timeout_s:
                connection.close()
                continue
            return connection, True
        return await self._open(origin), False

    async def _open(self, origin: tuple[str, str, int]) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context = self._ssl_context() if scheme == "https" else None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(origin), host, port, ssl=context, server_hostname=host if context else None
                )
        except TimeoutError as exc:
            raise HttpError(f"connect to {host}:{port} timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            raise HttpError(f"cannot connect to {host}:{port}: {type(exc).__name__}") from exc
        self.connections_opened += 1
        return connection

    def _release(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.origin, collections.deque())
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)
