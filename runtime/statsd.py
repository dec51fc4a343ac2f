"""A StatsD client for jambonz's metrics (SPEC 5.2): the datagrams hot-shots sends, over UDP or TCP.

One metric is one line, `<prefix><name>:<value>|<type>[|@<rate>][|#tag:value,...]` (DogStatsD tags, as
hot-shots writes them), or `<prefix><name>,tag=value,...:<value>|<type>[|@<rate>]` in Telegraf's format.
With `STATS_SAMPLE_RATE` below 1 a metric is sent with that probability and carries `|@<rate>`. With
`STATS_MAX_BUFFER_SIZE` above 0 lines are joined by newlines into datagrams up to that size, flushed when
full or after `STATS_BUFFER_FLUSH_INTERVAL` ms; at 0 each metric is its own datagram. Sending never blocks
and never raises: metrics that cannot leave are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Sequence

from runtime.settings import StatsdSettings

log = logging.getLogger(__name__)

DEFAULT_FLUSH_INTERVAL_MS = 1000  # hot-shots' default when buffering without an interval
TCP_RECONNECT_S = 5.0


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def format_metric(
    name: str,
    value: float,
    kind: str,
    tags: Sequence[str] = (),
    *,
    prefix: str = "",
    sample_rate: float = 1.0,
    telegraf: bool = False,
) -> str:
    """One StatsD line. `tags` are `key:value` strings (or bare words); pure, for the tests too."""
    rate = f"|@{_number(sample_rate)}" if sample_rate < 1 else ""
    if telegraf:
        tag_text = "".join("," + tag.replace(":", "=", 1) for tag in tags)
        return f"{prefix}{name}{tag_text}:{_number(value)}|{kind}{rate}"
    tag_text = f"|#{','.join(tags)}" if tags else ""
    return f"{prefix}{name}:{_number(value)}|{kind}{rate}{tag_text}"


def merge_tags(global_tags: Sequence[str], tags: Iterable[str]) -> list[str]:
    """Global tags first, minus those a metric's own tag of the same key replaces, then the metric's."""
    own = list(tags)
    keys = {tag.partition(":")[0] for tag in own}
    return [tag for tag in global_tags if tag.partition(":")[0] not in keys] + own


class _Udp(asyncio.DatagramProtocol):
    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable: nobody listens yet
        log.debug("statsd datagram not delivered error=%s", exc)


class StatsdClient:
    """Sends metrics to `STATS_HOST:STATS_PORT`. An async context manager; closing is idempotent."""

    def __init__(self, settings: StatsdSettings, *, rng: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self._rng = rng
        self._global_tags = list(settings.tags)
        self._buffer: list[str] = []
        self._buffered_bytes = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.StreamWriter | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._next_connect = 0.0
        self._closed = False
        self.sent = 0
        self.dropped = 0

    async def __aenter__(self) -> StatsdClient:
        await self.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        target = (self.settings.host, self.settings.port)
        if self.settings.protocol == "tcp":
            await self._connect_tcp()
        else:
            transport, _ = await loop.create_datagram_endpoint(_Udp, remote_addr=target)
            self._udp = transport
        log.info(
            "statsd on protocol=%s address=%s:%d prefix=%r telegraf=%s",
            self.settings.protocol,
            self.settings.host,
            self.settings.port,
            self.settings.prefix,
            self.settings.telegraf,
        )

    async def _connect_tcp(self) -> None:
        self._next_connect = asyncio.get_running_loop().time() + TCP_RECONNECT_S
        try:
            async with asyncio.timeout(2.0):
                _, writer = await asyncio.open_connection(self.settings.host, self.settings.port)
        except (OSError, TimeoutError) as exc:
            log.warning("statsd tcp connection failed, metrics dropped until it connects error=%s", exc)
            return
        self._tcp = writer

    async def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            try:
                await self._tcp.wait_closed()
            except OSError:
                pass

    # --- the metric kinds jambonz uses -----------------------------------------------------------

    def histogram(self, name: str, value: float, tags: Iterable[str] = ()) -> None:
        self.send(name, value, "h", tags)

    def gauge(self, name: str, value: float, tags: Iterable[str] = ()) -> None:
        self.send(name, value, "g", tags)

    def increment(self, name: str, value: float = 1, tags: Iterable[str] = ()) -> None:
        self.send(name, value, "c", tags)

    def timing(self, name: str, value_ms: float, tags: Iterable[str] = ()) -> None:
        self.send(name, value_ms, "ms", tags)

    def send(self, name: str, value: float, kind: str, tags: Iterable[str] = ()) -> None:
        if self._closed:
            return
        rate = self.settings.sample_rate
        if rate < 1 and self._rng() > rate:
            return
        line = format_metric(
            name,
            value,
            kind,
            merge_tags(self._global_tags, tags),
            prefix=self.settings.prefix,
            sample_rate=rate,
            telegraf=self.settings.telegraf,
        )
        limit = self.settings.max_buffer_size
        if limit <= 0:
            self._write(line)
            return
        if self._buffer and self._buffered_bytes + 1 + len(line) > limit:
            self.flush()
        self._buffer.append(line)
        self._buffered_bytes += len(line) + (1 if len(self._buffer) > 1 else 0)
        if self._flush_timer is None:
            interval_ms = self.settings.buffer_flush_interval_ms or DEFAULT_FLUSH_INTERVAL_MS
            self._flush_timer = asyncio.get_running_loop().call_later(interval_ms / 1000, self.flush)

    def flush(self) -> None:
        """Sends what is buffered, as one datagram."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._buffer:
            lines, self._buffer, self._buffered_bytes = self._buffer, [], 0
            self._write("\n".join(lines), count=len(lines))

    def _write(self, text: str, count: int = 1) -> None:
        if self._udp is not None:
            self._udp.sendto(text.encode())
            self.sent += count
            return
        if self._tcp is not None and not self._tcp.is_closing():
            self._tcp.write(text.encode() + b"\n")  # hot-shots ends each TCP message with a newline
            self.sent += count
            return
        self.dropped += count
        self._reconnect_later()

    def _reconnect_later(self) -> None:
        if self.settings.protocol != "tcp" or self._closed:
            return
        if self._connecting is not None and not self._connecting.done():
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_connect:
            return
        # Owned by the client: cancelled and awaited by close().
        self._connecting = loop.create_task(self._connect_tcp(), name="statsd-connect")
