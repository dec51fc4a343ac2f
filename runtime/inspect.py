"""`sbc-sidecar events tail`: one line per event, as they arrive, with secrets left out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec

from events import Event, StreamNames, default_codec
from runtime.connections import open_redis
from runtime.settings import Settings

STREAM_KINDS = ("requests", "registrations", "servers", "carriers", "commands", "dead")
# Fields never printed: digest responses and raw header maps may carry credentials.
REDACTED_FIELDS = frozenset({"authorization", "headers"})


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


async def tail_events(settings: Settings, *, streams: Sequence[str] | None, from_start: bool, limit: int | None) -> int:
    names = StreamNames(settings.eventlog.cluster_id)
    kinds = list(streams or STREAM_KINDS)
    unknown = [k for k in kinds if k not in STREAM_KINDS]
    if unknown:
        print(f"unknown stream {unknown[0]!r}; choose from {', '.join(STREAM_KINDS)}")
        return 2
    codec = default_codec()
    positions = {getattr(names, kind): ("0-0" if from_start else "$") for kind in kinds}
    printed = 0
    async with open_redis(settings.redis) as redis:
        while limit is None or printed < limit:
            response: Any = await redis.xread(positions, count=100, block=1000)  # type: ignore[arg-type]
            for stream, entries in response or []:
                stream_name = stream.decode()
                for entry_id, fields in entries:
                    positions[stream_name] = entry_id.decode()
                    print(_line(stream_name, entry_id.decode(), fields, codec), flush=True)
                    printed += 1
                    if limit is not None and printed >= limit:
                        return 0
            await asyncio.sleep(0)
    return 0


def _line(stream: str, entry_id: str, fields: dict[bytes, bytes], codec: object) -> str:
    kind = stream.rsplit(":", 1)[-1]
    if kind == "dead":
        error = fields.get(b"dead_error", b"").decode(errors="replace")
        event_type = fields.get(b"type", b"?").decode(errors="replace")
        return f"{entry_id} dead {event_type} error={error!r}"
    try:
        event = codec.decode(fields)  # type: ignore[attr-defined]
    except ValueError as exc:
        return f"{entry_id} {kind} undecodable: {exc}"
    return f"{entry_id} {kind} {describe(event)}"
