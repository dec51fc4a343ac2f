"""`sbc-sidecar events tail` and `history`: the event log and the history projection, read from the CLI.

`events tail` reads Redis only; `history` reads Redis and, when JAMBONES_MYSQL_* are set, the MySQL archive of
older steps (projections/archive.py). Lines leave out secrets: digest responses and raw header maps are never printed.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from events import EVENT_TYPES, Event, EventCodec, StreamNames, default_codec, partition_of
from events.streams import partition_names
from runtime.connections import open_redis
from runtime.settings import StreamSettings

STREAM_KINDS = ("requests", "heartbeats", "registrations", "servers", "carriers", "commands", "dead")
# Fields never printed: digest responses and raw header maps may carry credentials.
REDACTED_FIELDS = frozenset({"authorization", "headers"})
EVENT_TYPE_NAMES = frozenset(event_type.TYPE for event_type in EVENT_TYPES)
PAGE_SIZE = 500
LAST_SEQUENCE = 2**64 - 1

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

AOR_FORMS = "write user@host, sip:user@host, sips:user@host or <sip:user@host>"

Entry = tuple[str, str, dict[bytes, bytes]]  # stream kind, entry id, fields


class InspectError(ValueError):
    """A bad argument of an inspection command (an AOR, a time, a type); exit status 2."""


def parse_aor(text: str) -> str:
    """The AOR `user@host` of an address as users write it.

    Accepts `user@host`, `sip:user@host`, `sips:user@host` and any of them in `<...>` (a display name
    before it is ignored); URI parameters, headers and a port are dropped, as the registrar keys by
    the To-URI's user and host.
    """
    address = text.strip()
    if "<" in address:
        inside = address[address.index("<") + 1 :]
        if ">" not in inside:
            raise InspectError(f"{text!r} opens '<' without closing it; {AOR_FORMS}")
        address = inside[: inside.index(">")].strip()
    scheme, colon, rest = address.partition(":")
    if colon and scheme.lower() in ("sip", "sips"):
        address = rest
    user, at, host = address.rpartition("@")
    host = re.split(r"[;?]", host, maxsplit=1)[0]
    if host.startswith("["):
        host = host[: host.find("]") + 1] if "]" in host else host
    else:
        host = host.partition(":")[0]
    if not at or not user or not host or any(c.isspace() for c in user + host):
        raise InspectError(f"{text!r} is not an address of record; {AOR_FORMS}")
    return f"{user}@{host}"


def parse_since(text: str, now: datetime, option: str = "--since") -> int:
    """A time in Unix ms: a duration back from `now` (`90s`, `15m`, `2h`, `1d`) or an ISO 8601 time (UTC if it
    names no zone). `option` names the argument in the error (`--since`, `--until`)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match:
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        return int((now - timedelta(seconds=seconds)).timestamp() * 1000)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        want = "a duration such as 15m, 2h, 1d or a time such as 2026-11-26T09:15"
        raise InspectError(f"{option} {text!r}: want {want}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_types(values: Iterable[str]) -> frozenset[str]:
    """Event type names from repeated or comma-separated `--type` values, each checked against the catalogue."""
    by_lower = {name.lower(): name for name in EVENT_TYPE_NAMES}
    names = set()
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            name = by_lower.get(part.lower())
            if name is None:
                choices = ", ".join(sorted(EVENT_TYPE_NAMES))
                raise InspectError(f"--type {part!r} is no event type; choose from {choices}")
            names.add(name)
    return frozenset(names)


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream id as (ms, sequence), the order Redis gives entries."""
    ms, _, sequence = entry_id.partition("-")
    return int(ms), int(sequence or 0)


@dataclass(frozen=True, slots=True)
class TailFilter:
    """Which entries `events tail` prints: all of one AOR, of some types, through one SBC, appended since a time."""

    aor: str | None = None
    types: frozenset[str] = frozenset()
    since_ms: int | None = None
    sbc: str | None = None  # an ingest id: its requests, and the decisions about them

    def admits(self, entry_id: str, event_type: str, aor: str | None, sbc: str | None = None) -> bool:
        if self.since_ms is not None and entry_key(entry_id)[0] < self.since_ms:
            return False
        if self.types and event_type not in self.types:
            return False
        if self.sbc is not None and sbc != self.sbc:
            return False
        return self.aor is None or aor == self.aor


def sbc_of(event: Event | None) -> str | None:
    """The SBC (ingest id) that received the request an event is or answers: a request's `reply_to`, a decision's
    request summary; None for what no SBC received (expiries, server and carrier facts)."""
    if event is None:
        return None
    summary = getattr(event, "request", None)
    if summary is not None:
        return getattr(summary, "sbc", None)
    reply_to = getattr(event, "reply_to", None)
    return reply_to if isinstance(reply_to, str) else None


def describe(event: Event) -> str:
    """`<time> <Type> key=value ...`, envelope ids shortened, secrets and bulky fields left out."""
    data = msgspec.structs.asdict(event)
    parts = [event.occurred_at.isoformat(timespec="milliseconds"), event.TYPE]
    for key, value in data.items():
        if key in ("event_id", "occurred_at", "causation_id") or key in REDACTED_FIELDS:
            continue
        if value is None or value == [] or value == {}:
            continue
        parts.append(f"{key}={value}")
    return " ".join(parts)


def render(entry: Entry, codec: EventCodec, where: TailFilter) -> str | None:
    """The line of one stream entry, or None when the filter leaves it out."""
    kind, entry_id, fields = entry
    event_type = fields.get(b"type", b"?").decode(errors="replace")
    try:
        event: Event | None = codec.decode(fields)
    except ValueError as exc:
        event, problem = None, str(exc)
    aor = getattr(event, "aor", None) if event is not None else None
    if not where.admits(entry_id, event_type, aor, sbc_of(event)):
        return None
    if kind == "dead":
        error = fields.get(b"dead_error", b"").decode(errors="replace")
        return f"{entry_id} dead {event_type} error={error!r}"
    if event is None:
        return f"{entry_id} {kind} undecodable: {problem}"
    return f"{entry_id} {kind} {describe(event)}"


class _Backlog:
    """One stream's retained entries after a position, read a page at a time."""

    def __init__(self, redis: Any, kind: str, stream: str, after: str) -> None:
        self.redis, self.kind, self.stream = redis, kind, stream
        self.after = after  # the last id taken (exclusive start of the next page)
        self.buffered: deque[tuple[str, dict[bytes, bytes]]] = deque()
        self.exhausted = False

    async def head(self) -> tuple[str, dict[bytes, bytes]] | None:
        if not self.buffered and not self.exhausted:
            page = await self.redis.xrange(self.stream, min=f"({self.after}", max="+", count=PAGE_SIZE)
            self.exhausted = len(page) < PAGE_SIZE
            self.buffered.extend((entry_id.decode(), fields) for entry_id, fields in page)
        return self.buffered[0] if self.buffered else None

    def take(self) -> Entry:
        entry_id, fields = self.buffered.popleft()
        self.after = entry_id
        return self.kind, entry_id, fields


async def merged_backlog(backlogs: Sequence[_Backlog]) -> AsyncIterator[Entry]:
    """Every backlog's entries in one sequence ordered by stream id, i.e. by the time Redis appended them."""
    while True:
        first: _Backlog | None = None
        first_key = (0, 0)
        for backlog in backlogs:
            head = await backlog.head()
            if head is not None and (first is None or entry_key(head[0]) < first_key):
                first, first_key = backlog, entry_key(head[0])
        if first is None:
            return
        yield first.take()


async def _start_after(redis: Any, stream: str, since_ms: int | None) -> str:
    """The id after which to start: before `since_ms`, or the stream's last entry (only what comes next)."""
    if since_ms is not None:
        return f"{since_ms - 1}-{LAST_SEQUENCE}" if since_ms > 0 else "0-0"
    last = await redis.xrevrange(stream, max="+", min="-", count=1)
    return last[0][0].decode() if last else "0-0"


async def tail_events(
    settings: StreamSettings,
    *,
    streams: Sequence[str] | None,
    from_start: bool,
    limit: int | None,
    where: TailFilter = TailFilter(),
) -> int:
    """Prints the backlog asked for (`from_start` or `where.since_ms`) in stream-id order, then follows. Every
    partition's streams are read (SIDECAR_PARTITIONS), each partition's in a read of its own (on a Redis Cluster a
    read spans one slot)."""
    partitions = partition_names(settings.eventlog.cluster_id, settings.eventlog.partitions)
    kinds = list(dict.fromkeys(streams or STREAM_KINDS))
    unknown = [k for k in kinds if k not in STREAM_KINDS]
    if unknown:
        raise InspectError(f"unknown stream {unknown[0]!r}; choose from {', '.join(STREAM_KINDS)}")
    codec = default_codec()
    since_ms = where.since_ms if where.since_ms is not None else (0 if from_start else None)
    printed = 0

    def show(entry: Entry) -> bool:
        """Prints the entry if admitted; True once the limit is reached."""
        nonlocal printed
        line = render(entry, codec, where)
        if line is not None:
            print(line, flush=True)
            printed += 1
        return limit is not None and printed >= limit

    async with open_redis(settings.redis) as redis:
        backlogs = [
            _Backlog(redis, kind, getattr(names, kind), await _start_after(redis, getattr(names, kind), since_ms))
            for names in partitions
            for kind in kinds
        ]
        if limit is not None and limit <= 0:
            return 0
        async for entry in merged_backlog(backlogs):
            if show(entry):
                return 0
        kind_of = {backlog.stream: backlog.kind for backlog in backlogs}
        positions = [
            {b.stream: b.after for b in backlogs if b.stream.startswith(f"{names.prefix}:")} for names in partitions
        ]
        while True:
            responses: Any = await asyncio.gather(
                *(redis.xread(p, count=100, block=1000) for p in positions)  # type: ignore[arg-type]
            )
            arrived: list[Entry] = []
            for partition_positions, response in zip(positions, responses, strict=True):
                for stream, entries in response or []:
                    stream_name = stream.decode()
                    for entry_id, fields in entries:
                        partition_positions[stream_name] = entry_id.decode()
                        arrived.append((kind_of[stream_name], entry_id.decode(), fields))
            for entry in sorted(arrived, key=lambda e: entry_key(e[1])):
                if show(entry):
                    return 0
            await asyncio.sleep(0)


async def print_history(
    settings: StreamSettings,
    address: str,
    *,
    as_json: bool,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> int:
    """The story of one AOR, oldest first: the archive (MySQL, when configured) and Redis as one, within the
    bounds; exit status 1 when there is none."""
    from projections.history import describe_step, load_history

    aor = parse_aor(address)
    names = StreamNames(settings.eventlog.cluster_id, partition_of(aor, settings.eventlog.partitions))
    archived = await _archived_steps(settings, aor, since_ms)
    async with open_redis(settings.redis) as redis:
        steps = await load_history(redis, names, aor, since_ms=since_ms, until_ms=until_ms, archived=archived)
    if not steps:
        if since_ms is None and until_ms is None:
            print(f"no history for {aor} in the last {settings.eventlog.retention_s // 3600} hours")
        else:
            print(f"no history for {aor} from {_shown(since_ms, 'the start')} to {_shown(until_ms, 'now')}")
        return 1
    for step in steps:
        print(json.dumps(step) if as_json else describe_step(step))
    return 0


def _shown(ms: int | None, open_end: str) -> str:
    return open_end if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


async def _archived_steps(settings: StreamSettings, aor: str, since_ms: int | None) -> list[tuple[str, float]]:
    """The AOR's steps in the MySQL archive (member JSON, score); none, said on stderr, when MySQL is not
    configured or does not answer."""
    import aiomysql

    from projections.archive import read_archive
    from runtime.connections import open_mysql

    if settings.mysql is None:
        print("history: the archive was not read (JAMBONES_MYSQL_* not set): Redis only", file=sys.stderr)
        return []
    try:
        async with open_mysql(settings.mysql) as pool:
            rows = await read_archive(pool, aor, since_ms)
    except (aiomysql.Error, OSError, TimeoutError) as exc:
        where = f"{settings.mysql.host}:{settings.mysql.port}"
        print(f"history: the archive was not read (MySQL at {where}: {exc}): Redis only", file=sys.stderr)
        return []
    return [(row.step, float(row.at_ms)) for row in rows]
