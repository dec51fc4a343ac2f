"""`sbc-sidecar sbcs`: the SBCs sharing the streams, live ones first, then those recently stopped or dead."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from events import StreamNames
from ingest.membership import SbcStatus, read_sbcs
from runtime.connections import open_redis
from runtime.settings import StreamSettings


def _ago(ms: int) -> str:
    seconds = max(ms, 0) / 1000
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(status: SbcStatus) -> str:
    """One line: id, state, last heartbeat, SIP addresses, start, pid and host, and the clean-up after it."""
    parts = [f"{status.ingest_id}  {status.state:<7}  last seen {_ago(status.now_ms - status.last_seen_ms)}"]
    about = status.announcement
    if about is not None:
        parts.append(f"sip {about.sbc_address or '-'}")
        if about.public_address:
            parts.append(f"public {about.public_address}")
        parts.append(f"started {_time(about.started_at_ms)}  pid {about.pid}  host {about.host}")
    if status.cleaned_at_ms is not None:
        parts.append(f"reply stream and edge group removed {_ago(status.now_ms - status.cleaned_at_ms)}")
    elif status.state != "live":
        parts.append("not cleaned up yet (waits for the reply deadline)")
    return "  ".join(parts)


def as_json(status: SbcStatus) -> str:
    return msgspec.json.encode(status).decode()


async def print_sbcs(settings: StreamSettings, *, json_lines: bool = False) -> int:
    names = StreamNames(settings.eventlog.cluster_id)
    async with open_redis(settings.redis) as redis:
        sbcs = await read_sbcs(redis, names)
    for status in sbcs:
        print(as_json(status) if json_lines else describe(status))
    if not sbcs and not json_lines:
        print("no SBC has announced itself (no ingest running, or all forgotten)")
    return 0
