"""The event log on Redis Streams: batched appends with retention trimming, groups, reads.

Every write here is batched: one pipeline per batch of appends, never a round trip per event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import hiredis
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from events import Event, EventCodec, StreamNames
from events.codec import FIELD_DATA, FIELD_TYPE, FIELD_VERSION
from runtime.cluster import ClusterLinks
from runtime.connections import is_cluster_client
from runtime.errors import NotStored, StoreUnavailable
from runtime.faults import REDIS_FAULTS
from runtime.redis_scripts import Script
from runtime.resp import LinkSettings, NotConnected, RespLink
from runtime.settings import EventLogSettings

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as read back from a stream, with its entry id."""

    stream: str
    entry_id: str
    event: Event


RawEntry = tuple[bytes, dict[bytes, bytes]]


class StreamReader:
    """Blocking stream reads on a connection of their own (one per consumer or reply reader)."""

    def __init__(self, redis: Redis, link: RespLink | ClusterLinks | None) -> None:
        self._redis = redis
        self._link = link

    async def read_group(
        self, group: str, consumer: str, positions: dict[str, str], count: int, block_ms: int | None
    ) -> list[tuple[str, RawEntry]]:
        """XREADGROUP over the streams; entries as (stream, (id, fields))."""
        if self._link is None:
            response: Any = await self._redis.xreadgroup(group, consumer, positions, count=count, block=block_ms)  # type: ignore[arg-type]
            return [(_text(stream), entry) for stream, entries in response or [] for entry in entries]
        command: list[object] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
        if block_ms is not None:
            command += ["BLOCK", block_ms]
        command += ["STREAMS", *positions.keys(), *positions.values()]
        return _entries(await self._link.command(*command))

    async def read(self, positions: dict[str, str], count: int, block_ms: int | None) -> list[tuple[str, RawEntry]]:
        """XREAD (no group) from the given positions."""
        if self._link is None:
            response: Any = await self._redis.xread(positions, count=count, block=block_ms)  # type: ignore[arg-type]
            return [(_text(stream), entry) for stream, entries in response or [] for entry in entries]
        command: list[object] = ["XREAD", "COUNT", count]
        if block_ms is not None:
            command += ["BLOCK", block_ms]
        command += ["STREAMS", *positions.keys(), *positions.values()]
        return _entries(await self._link.command(*command))

    def close(self) -> None:
        if self._link is not None:
            self._link.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(reply: object) -> list[tuple[str, RawEntry]]:
    """hiredis's XREAD/XREADGROUP reply as (stream, (id, {field: value}))."""
    out: list[tuple[str, RawEntry]] = []
    if not reply:
        return out
    for stream, entries in reply:  # type: ignore[attr-defined]
        name = stream.decode()
        for entry_id, flat in entries:
            if flat is None:
                continue  # deleted while pending
            it = iter(flat)
            out.append((name, (entry_id, dict(zip(it, it, strict=True)))))
    return out


# A Redis Cluster's answers to a command it did not run (after the redirects followed): it may be sent again.
_NOT_RUN = ("CLUSTERDOWN", "TRYAGAIN", "MOVED ", "ASK ")


def _appended(reply: object, count: int) -> str | StoreUnavailable:
    """An XADD's reply: the entry id, or the fault (a Redis error reply, an unreachable master) as StoreUnavailable;
    NotStored when the append surely did not happen."""
    if isinstance(reply, NotConnected) or (isinstance(reply, hiredis.ReplyError) and str(reply).startswith(_NOT_RUN)):
        return NotStored(f"append of {count} events failed: {reply}")
    if isinstance(reply, BaseException | hiredis.ReplyError):
        return StoreUnavailable(f"append of {count} events failed: {reply}")
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def retention_min_id(retention_s: int, now_ms: int | None = None) -> str:
    """The oldest stream id a retention window keeps: what XADD MINID and XTRIM MINID are given."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{max(now_ms - retention_s * 1000, 0)}-0"


# Given an event's XADD command and the event: the commands that append it and write what must be visible
# with it (a script call; on a Redis Cluster, the writes of other slots beside it), or None for the plain XADD.
InlineProjection = Callable[[Sequence[object], Event], Sequence[Sequence[object]] | None]


class EventLog:
    """Appends events to streams and reads them back; owns trimming and consumer groups.

    With `link` settings, the hot path (appends, commits, blocking reads) goes over lean hiredis
    connections (runtime/resp.py); without (e.g. Redis Sentinel), over redis-py. With a Redis Cluster client,
    `link` is any node of the cluster and the lean connections are routed by slot (runtime/cluster.py).
    """

    def __init__(
        self,
        redis: Redis,
        codec: EventCodec,
        names: StreamNames,
        settings: EventLogSettings,
        link: LinkSettings | None = None,
    ) -> None:
        self.redis = redis
        self.codec = codec
        self.names = names
        self.settings = settings
        self._link_settings = link
        if is_cluster_client(redis) and link is None:
            raise ValueError("an event log on a Redis Cluster needs the link settings of a node")
        self._cluster = ClusterLinks(link) if link is not None and is_cluster_client(redis) else None
        self._link: RespLink | ClusterLinks | None = self._cluster
        if self._link is None and link is not None:
            self._link = RespLink(link)
        self._readers: list[StreamReader] = []
        self._local: dict[str, Callable[[Event], None]] = {}
        self._inline: dict[str, InlineProjection] = {}
        self._min_id_value = ""
        self._min_id_until = 0.0

    def attach_local(self, stream: str, sink: Callable[[Event], None]) -> None:
        """Events a consumer of this process commits for `stream` go to `sink` instead of Redis.

        Only for streams whose one reader lives in this process and that nobody else needs to see:
        the reply stream of an ingest. The sink is called after the commit's EXEC, so a reply is
        never seen before the facts it answers are stored.
        """
        self._local[stream] = sink

    def detach_local(self, stream: str) -> None:
        self._local.pop(stream, None)

    def project_inline(self, stream: str, projection: InlineProjection) -> None:
        """Events a consumer commits to `stream` are appended by `projection`'s command when it gives one:
        the XADD together with the read-model writes that must be visible when the commit is (DESIGN 6)."""
        self._inline[stream] = projection

    def append_commands(self, stream: str, event: Event) -> Sequence[Sequence[object]]:
        """The commands that append `event` in a commit: its XADD, or the inline projection's commands."""
        xadd = self.xadd_command(stream, event)
        projection = self._inline.get(stream)
        if projection is None:
            return (xadd,)
        return projection(xadd, event) or (xadd,)

    @property
    def cluster(self) -> bool:
        """Whether Redis is a Cluster: the keys jambonz reads are then written apart from a commit's MULTI."""
        return self._cluster is not None

    def local_sink(self, stream: str) -> Callable[[Event], None] | None:
        return self._local.get(stream)

    def blocking_reader(self) -> StreamReader:
        """A reader with its own connection; closed by its owner, or at the latest by `close`."""
        link: RespLink | ClusterLinks | None = None
        if self._cluster is not None:
            link = self._cluster.dedicated()
        elif self._link_settings is not None:
            link = RespLink(self._link_settings)
        reader = StreamReader(self.redis, link)
        self._readers.append(reader)
        return reader

    async def commit(self, commands: Sequence[Sequence[object]], scripts: Sequence[Script] = ()) -> None:
        """Runs the commands in one MULTI/EXEC, the scripts they call loaded first inside it.

        MULTI does not roll back a NOSCRIPT error, so every script is loaded in the same
        transaction that uses it (once per batch: cheap next to the batch itself).
        """
        if self._cluster is not None:
            await self._cluster.commit(commands, [(s.sha, s.source) for s in scripts], self._is_reply_append)
            return
        if self._link is not None:
            await self._link.transaction(commands, [s.source for s in scripts])
            return
        pipe = self.redis.pipeline(transaction=True)
        for script in scripts:
            pipe.execute_command("SCRIPT", "LOAD", script.source)
        for command in commands:
            pipe.execute_command(*command)
        await pipe.execute()

    def _is_reply_append(self, command: Sequence[object]) -> bool:
        return command[0] == "XADD" and self.names.is_replies(str(command[1]))

    async def read_keys(self, keys: list[str]) -> list[Any]:
        """MGET over the hot-path link: values of keys the projections keep (None where absent)."""
        if self._cluster is not None:
            return await self._cluster.mget(keys)
        if self._link is None:
            values: list[Any] = await self.redis.mget(keys)
            return values
        return list(await self._link.command("MGET", *keys))  # type: ignore[call-overload]

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
        for reader in self._readers:
            reader.close()
        self._readers.clear()

    def xadd_command(self, stream: str, event: Event) -> list[object]:
        """The XADD for one event, trimmed by age (replies streams: by length)."""
        type_name, version, data = self.codec.encode_fields(event)
        limit: int | str
        if self.names.is_replies(stream):
            trim, limit = "MAXLEN", self.settings.replies_maxlen
        else:
            trim, limit = "MINID", self._min_id()
        return [
            "XADD",
            stream,
            trim,
            "~",
            limit,
            "*",
            FIELD_TYPE,
            type_name,
            FIELD_VERSION,
            version,
            FIELD_DATA,
            data,
        ]

    def _min_id(self) -> str:
        """The MINID of an append: the retention window's start, recomputed at most once a second (the trim is
        approximate anyway)."""
        now = time.monotonic()
        if now >= self._min_id_until:
            self._min_id_until = now + 1.0
            self._min_id_value = retention_min_id(self.settings.retention_s)
        return self._min_id_value

    async def append(self, stream: str, events: Sequence[Event]) -> list[str]:
        return await self.append_many([(stream, event) for event in events])

    async def append_many(self, items: Sequence[tuple[str, Event]]) -> list[str]:
        """Appends in one pipeline; returns the entry ids in order."""
        return await self.execute_appends([self.xadd_command(stream, event) for stream, event in items])

    async def execute_appends(self, commands: Sequence[Sequence[object]]) -> list[str]:
        """Runs prepared XADD commands in one pipeline; returns the entry ids in order."""
        results = await self.append_each(commands)
        failed = next((r for r in results if isinstance(r, StoreUnavailable)), None)
        if failed is not None:
            raise failed
        return [str(r) for r in results]

    async def append_each(self, commands: Sequence[Sequence[object]]) -> list[str | StoreUnavailable]:
        """Runs prepared XADD commands in one pipeline; the entry id of each, or the fault that kept it from its
        stream. On a Redis Cluster the commands go to several masters, and one that cannot be reached fails its own
        appends only: the others are stored, and their requests will be decided. Raises `StoreUnavailable` when
        nothing can be told apart (the one connection to a single Redis broke)."""
        if not commands:
            return []
        try:
            if self._cluster is not None:
                replies: list[object] = await self._cluster.replies(commands)
            elif self._link is not None:
                replies = await self._link.pipeline(commands)
            else:
                pipe = self.redis.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
        except NotConnected as exc:
            raise NotStored(f"append of {len(commands)} events failed: {exc}") from exc
        except REDIS_FAULTS as exc:
            raise StoreUnavailable(f"append of {len(commands)} events failed: {exc}") from exc
        return [_appended(reply, len(commands)) for reply in replies]

    async def ensure_group(self, stream: str, group: str, start_id: str = "0") -> None:
        """Creates the group (and the stream) unless it exists; safe to call from every process."""
        try:
            await self.redis.xgroup_create(stream, group, id=start_id, mkstream=True)
            log.info("consumer group created stream=%s group=%s", stream, group)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def trim(self, stream: str, now_ms: int | None = None) -> int:
        """Drops entries older than the retention window (exact, not approximate)."""
        min_id = retention_min_id(self.settings.retention_s, now_ms)
        return int(await self.redis.xtrim(stream, minid=min_id, approximate=False))

    async def read(self, stream: str, start: str = "-", end: str = "+", count: int | None = None) -> list[StoredEvent]:
        """Reads a range of a stream and decodes it; undecodable entries are skipped with a warning."""
        entries: Any = await self.redis.xrange(stream, min=start, max=end, count=count)
        return list(self._decode_all(stream, entries))

    async def scan(self, stream: str, batch: int = 1000, after: str | None = None) -> list[StoredEvent]:
        """The whole stream (or what follows the entry `after`), oldest first, read in batches."""
        out: list[StoredEvent] = []
        start = f"({after}" if after else "-"
        while True:
            entries: Any = await self.redis.xrange(stream, min=start, max="+", count=batch)
            if not entries:
                return out
            out.extend(self._decode_all(stream, entries))
            if len(entries) < batch:
                return out
            last = entries[-1][0].decode()
            ms, _, seq = last.partition("-")
            start = f"{ms}-{int(seq) + 1}"

    def _decode_all(self, stream: str, entries: Iterable[tuple[bytes, dict[bytes, bytes]]]) -> Iterable[StoredEvent]:
        for entry_id, fields in entries:
            try:
                yield StoredEvent(stream, entry_id.decode(), self.codec.decode(fields))
            except ValueError as exc:
                log.warning("undecodable entry skipped stream=%s id=%s error=%s", stream, entry_id, exc)


class Appender:
    """Write-behind batcher for ingest: coalesces appends made in the same loop turn.

    `submit` returns at once; the caller awaits its own future (ingest: the reply waiter), which the
    appender fails with `StoreUnavailable` if the append does not go through. While one pipeline is in
    flight, new appends queue up and go in the next one, so the batch grows with the load and no timer is
    needed. An append that surely was not stored (`NotStored`: no connection, a Cluster that refused it) is
    sent again after each of RETRY_AFTER_S while its waiter waits: a Redis that restarts, or a Cluster master
    that comes back, within a second or two costs the phone a moment, not a 500.
    """

    RETRY_AFTER_S = (0.25, 0.5, 1.0, 2.0)  # 3.75 s in all, within the reply deadline (10 s)

    def __init__(self, log_: EventLog, max_batch: int = 500) -> None:
        self._log = log_
        self._max_batch = max_batch
        self._pending: list[tuple[list[object], asyncio.Future[Any], int]] = []  # command, waiter, tries so far
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self.retried = 0

    def submit(self, stream: str, event: Event, waiter: asyncio.Future[T]) -> None:
        """Queues the append of `event`; `waiter` gets the exception if it fails, and is left alone otherwise.

        An event that cannot be encoded raises here, alone.
        """
        if self._closed:
            raise StoreUnavailable("appender is closed")
        self._queue(self._log.xadd_command(stream, event), waiter, 0)

    def _queue(self, command: list[object], waiter: asyncio.Future[Any], tries: int) -> None:
        if self._closed and tries:  # a retry due after the close: nobody will send it
            if not waiter.done():
                waiter.set_exception(StoreUnavailable("appender is closed"))
            return
        self._pending.append((command, waiter, tries))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name="appender-flush")

    async def _flush_loop(self) -> None:
        await asyncio.sleep(0)  # let the rest of this loop turn queue up
        while self._pending:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            try:
                results = await self._log.append_each([command for command, _, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiter gets the fault
                error = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(f"append failed: {exc!r}")
                results = [error] * len(batch)
            loop = asyncio.get_running_loop()
            for (command, waiter, tries), result in zip(batch, results, strict=True):
                if not isinstance(result, StoreUnavailable) or waiter.done():
                    continue  # stored (its reply will come), or nobody waits any more
                if isinstance(result, NotStored) and tries < len(self.RETRY_AFTER_S) and not self._closed:
                    self.retried += 1
                    loop.call_later(self.RETRY_AFTER_S[tries], self._queue, command, waiter, tries + 1)
                    continue
                waiter.set_exception(result)  # only the appends that failed: the others will be decided

    async def __aenter__(self) -> Appender:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._flusher is not None:
            await self._flusher
