"""The StatsD client against a real UDP listener on loopback: one datagram per metric, or buffered, sampled."""

from __future__ import annotations

import asyncio

from runtime.settings import StatsdSettings
from runtime.statsd import StatsdClient
from tests.conftest import free_port


class Listener(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams.append(data)


async def received(settings: StatsdSettings, rolls: list[float] | None = None) -> list[bytes]:
    listener = Listener()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: listener, local_addr=("127.0.0.1", settings.port)
    )
    values = iter(rolls or [])
    try:
        async with StatsdClient(settings, rng=lambda: next(values)) as client:
            client.histogram("sbc.registration.total.response_time", 3, ["status:200"])
            client.gauge("sbc.users.count", 12)
            client.histogram("app.hook.response_time", 2, ["hook_type:auth", "status:200"])
        await asyncio.sleep(0.05)
    finally:
        transport.close()
    return listener.datagrams


async def test_one_datagram_per_metric_by_default() -> None:
    datagrams = await received(StatsdSettings(port=free_port(), tags=("sbc:a",)))
    assert datagrams == [
        b"sbc.registration.total.response_time:3|h|#sbc:a,status:200",
        b"sbc.users.count:12|g|#sbc:a",
        b"app.hook.response_time:2|h|#sbc:a,hook_type:auth,status:200",
    ]


async def test_buffered_metrics_share_datagrams_up_to_the_size() -> None:
    datagrams = await received(StatsdSettings(port=free_port(), max_buffer_size=80))
    assert datagrams == [
        b"sbc.registration.total.response_time:3|h|#status:200\nsbc.users.count:12|g",
        b"app.hook.response_time:2|h|#hook_type:auth,status:200",
    ]


async def test_sampled_metrics_go_with_their_rate() -> None:
    datagrams = await received(StatsdSettings(port=free_port(), sample_rate=0.5), rolls=[0.1, 0.9, 0.4])
    assert datagrams == [
        b"sbc.registration.total.response_time:3|h|@0.5|#status:200",
        b"app.hook.response_time:2|h|@0.5|#hook_type:auth,status:200",
    ]


async def test_tcp_metrics_are_newline_terminated_lines() -> None:
    lines: list[bytes] = []
    got = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            lines.append(line)
            got.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with StatsdClient(StatsdSettings(port=port, protocol="tcp", telegraf=True)) as client:
            client.histogram("sbc.registration.cached.response_time", 1, ["status:200"])
        async with asyncio.timeout(2):
            await got.wait()
    finally:
        server.close()
        await server.wait_closed()
    assert lines == [b"sbc.registration.cached.response_time,status=200:1|h\n"]
