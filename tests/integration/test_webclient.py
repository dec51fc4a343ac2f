"""The webhook's HTTP/1.1 client against real servers on loopback: aiohttp, and raw sockets for the odd framings."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from runtime.webclient import HttpClient, HttpError
from tests.certs import self_signed

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(
    routes: dict[str, Handler], *, keepalive_timeout: float = 75.0, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app, keepalive_timeout=keepalive_timeout)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"{'https' if ssl_context else 'http'}://{host}:{port}"


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    async with HttpClient(user_agent="sidecar-test/1") as http:
        yield http


async def test_post_round_trip_and_keep_alive(client: HttpClient) -> None:
    peers: list[object] = []
    seen: list[tuple[str, str, bytes, dict[str, str]]] = []

    async def echo(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        body = await request.read()
        seen.append((request.method, request.path_qs, body, dict(request.headers)))
        return web.json_response({"n": len(seen)})

    runner, base = await serve({"/hook": echo})
    try:
        for n in range(1, 6):
            response = await client.request(
                "POST", f"{base}/hook?a=1 2", headers={"Content-Type": "application/json"}, body=b'{"x":1}'
            )
            assert (response.status, response.body) == (200, b'{"n": %d}' % n)
            assert response.headers["content-type"].startswith("application/json")
    finally:
        await runner.cleanup()
    assert len(set(peers)) == 1 and client.connections_opened == 1  # one connection carried all five
    method, path_qs, body, headers = seen[0]
    assert (method, path_qs, body) == ("POST", "/hook?a=1%202", b'{"x":1}')
    assert headers["User-Agent"] == "sidecar-test/1" and headers["Content-Length"] == "7"
    assert headers["Host"] == base.removeprefix("http://")


async def test_a_connection_the_server_closed_while_idle_is_replaced(client: HttpClient) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    runner, base = await serve({"/": ok}, keepalive_timeout=0.05)
    try:
        assert (await client.request("GET", base + "/")).body == b"ok"
        await asyncio.sleep(0.3)  # the server closes the idle keep-alive connection meanwhile
        assert (await client.request("POST", base + "/", body=b"x")).body == b"ok"
    finally:
        await runner.cleanup()
    assert client.connections_opened == 2


async def test_redirects_are_followed_as_fetch_follows_them(client: HttpClient) -> None:
    calls: list[tuple[str, str, bytes]] = []

    async def hop(request: web.Request) -> web.StreamResponse:
        calls.append((request.method, request.path, await request.read()))
        status = int(request.match_info["status"])
        raise _redirect(status, "/final")

    async def final(request: web.Request) -> web.Response:
        calls.append((request.method, request.path, await request.read()))
        return web.json_response({"status": "ok"})

    runner, base = await serve({"/hop/{status}": hop, "/final": final})
    try:
        for status in (301, 302, 303, 307, 308):
            calls.clear()
            response = await client.request("POST", f"{base}/hop/{status}", body=b"payload")
            assert response.status == 200 and response.url == f"{base}/final"
            expected = ("POST", b"payload") if status in (307, 308) else ("GET", b"")
            assert (calls[1][0], calls[1][2]) == expected, status
    finally:
        await runner.cleanup()


def _redirect(status: int, location: str) -> web.HTTPException:
    kinds: dict[int, type[web.HTTPException]] = {
        301: web.HTTPMovedPermanently,
        302: web.HTTPFound,
        303: web.HTTPSeeOther,
        307: web.HTTPTemporaryRedirect,
        308: web.HTTPPermanentRedirect,
    }
    return kinds[status](location=location)  # type: ignore[call-arg]


async def test_endless_redirects_are_an_error(client: HttpClient) -> None:
    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(location="/loop")

    runner, base = await serve({"/loop": loop})
    try:
        with pytest.raises(HttpError, match="redirects"):
            await client.request("GET", base + "/loop")
    finally:
        await runner.cleanup()


async def test_chunked_and_gzip_bodies(client: HttpClient) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b'{"status":', b'"ok",', b'"expires":60}'):
            await response.write(part)
        await response.write_eof()
        return response

    async def zipped(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(b'{"status":"ok"}'), headers={"Content-Encoding": "gzip"})

    runner, base = await serve({"/chunked": chunked, "/gzip": zipped})
    try:
        assert (await client.request("GET", base + "/chunked")).body == b'{"status":"ok","expires":60}'
        assert (await client.request("GET", base + "/gzip")).body == b'{"status":"ok"}'
    finally:
        await runner.cleanup()


async def test_https_with_a_trusted_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="secure")

    runner, base = await serve({"/": ok}, ssl_context=server_context)
    try:
        async with HttpClient(ssl_context=ssl.create_default_context(cafile=cert)) as trusting:
            assert (await trusting.request("GET", base + "/")).body == b"secure"
        async with HttpClient() as default:  # system trust store: the self-signed server is refused
            with pytest.raises(HttpError, match="cannot connect"):
                await default.request("GET", base + "/")
    finally:
        await runner.cleanup()


async def raw_server(answer: bytes, *, close: bool) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            if not close:
                await reader.read()  # hold the connection open until the client goes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/"


@pytest.mark.parametrize(
    ("answer", "close", "body"),
    [
        (b"HTTP/1.0 200 OK\r\n\r\nuntil close", True, b"until close"),  # no length: the body ends at close
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False, b"ok"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", False, b""),
    ],
)
async def test_framings(client: HttpClient, answer: bytes, close: bool, body: bytes) -> None:
    server, url = await raw_server(answer, close=close)
    async with server:
        assert (await client.request("GET", url)).body == body


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"SIP/2.0 200 OK\r\n\r\n", "not an HTTP/1.x response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "closed before the response was complete"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nok", "malformed Content-Length"),  # Latin-1 "²"
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n", "malformed chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nok\r\n0\r\n\r\n", "malformed chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
        (b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n", "malformed response header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", "too large"),
        (b"", "closed before a response"),
    ],
)
async def test_broken_answers_are_http_errors(client: HttpClient, answer: bytes, error: str) -> None:
    server, url = await raw_server(answer, close=True)
    async with server:
        with pytest.raises(HttpError, match=error):
            await client.request("GET", url)


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/x", "http://", "http://127.0.0.1:99999/"])
async def test_unusable_urls(client: HttpClient, url: str) -> None:
    with pytest.raises(HttpError, match="unusable URL"):
        await client.request("GET", url)


async def test_a_header_with_a_line_break_is_refused(client: HttpClient) -> None:
    with pytest.raises(HttpError, match="line break"):
        await client.request("GET", "http://127.0.0.1:9/", headers={"X-Evil": "a\r\nInjected: 1"})


async def test_credentials_in_the_url_become_basic_auth(client: HttpClient) -> None:
    seen: list[str | None] = []

    async def who(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(text="ok")

    runner, base = await serve({"/": who})
    try:
        await client.request("GET", base.replace("http://", "http://foo:b%40r@") + "/")
        await client.request("GET", base.replace("http://", "http://foo:b%40r@") + "/", headers={"Authorization": "X"})
    finally:
        await runner.cleanup()
    assert seen == ["Basic Zm9vOmJAcg==", "X"]  # foo:b@r; an explicit header wins


async def test_a_cancelled_call_does_not_poison_the_pool(client: HttpClient) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    async def fast(request: web.Request) -> web.Response:
        return web.Response(text="fast")

    runner, base = await serve({"/slow": slow, "/fast": fast})
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.request("GET", base + "/slow")
        release.set()
        assert (await client.request("GET", base + "/fast")).body == b"fast"  # never the late answer
    finally:
        await runner.cleanup()


async def test_a_redirect_to_another_origin_drops_the_credentials(client: HttpClient) -> None:
    seen: dict[str, str | None] = {}

    async def elsewhere(request: web.Request) -> web.Response:
        seen["elsewhere"] = request.headers.get("Authorization")
        return web.Response(text="ok")

    other, other_base = await serve({"/landing": elsewhere})

    async def same(request: web.Request) -> web.Response:
        seen["same"] = request.headers.get("Authorization")
        raise web.HTTPTemporaryRedirect(location=f"{other_base}/landing")

    async def start(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(location="/same")

    runner, base = await serve({"/start": start, "/same": same})
    try:
        response = await client.request(
            "POST", f"{base}/start", headers={"Authorization": "Basic c2VjcmV0"}, body=b"{}"
        )
    finally:
        await runner.cleanup()
        await other.cleanup()
    assert response.body == b"ok"
    assert seen == {"same": "Basic c2VjcmV0", "elsewhere": None}  # kept on the same origin, dropped on the other


async def test_a_close_delimited_body_over_the_limit_is_refused(client: HttpClient) -> None:
    server, url = await raw_server(b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 64, close=True)
    async with server:
        with pytest.raises(HttpError, match="too large"):
            await client.request("GET", url, max_body=16)
