"""Writing time series to InfluxDB: the v1 line protocol and the one writer interface the projections use.

`InfluxV1Writer` posts lines to `/write?db=<database>` (InfluxDB 1.6-1.8, and 2.x's v1 compatibility API)
and creates each database on first use, as jambonz's `influx` client does. Points carry their own
timestamps (nanoseconds), so a re-delivered event rewrites its point instead of adding one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

import aiohttp

log = logging.getLogger(__name__)

FieldValue = str | int | float | bool


class TimeSeriesUnavailable(Exception):
    """InfluxDB could not be reached or refused the points; the caller keeps them for a retry."""


class TimeSeriesWriter(Protocol):
    async def write(self, database: str, lines: Sequence[str]) -> None: ...


def escape_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _field(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def line(
    measurement: str,
    tags: Mapping[str, str | None],
    fields: Mapping[str, FieldValue],
    timestamp_ns: int,
    *,
    first_tags: Sequence[str] = (),
) -> str:
    """One point in line protocol. Empty tags are left out; tags in `first_tags` come first, the rest sorted."""
    ordered = [key for key in first_tags if tags.get(key)] + sorted(k for k in tags if k not in first_tags)
    tag_text = "".join(f",{key}={escape_tag(value)}" for key in ordered if (value := tags.get(key)))
    field_text = ",".join(f"{key}={_field(value)}" for key, value in fields.items())
    return f"{escape_tag(measurement)}{tag_text} {field_text} {timestamp_ns}"


def influx_base_url(host: str) -> str:
    """`JAMBONES_TIME_SERIES_HOST` as a base URL: a bare host means port 8086, as jambonz's client."""
    return host.rstrip("/") if host.startswith(("http://", "https://")) else f"http://{host}:8086"


class InfluxV1Writer:
    """A TimeSeriesWriter over the v1 HTTP API, on the process's pooled aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, timeout_s: float = 5.0) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._databases: set[str] = set()
        self.written = 0

    async def _ensure_database(self, database: str) -> None:
        if database in self._databases:
            return
        async with self.session.post(
            f"{self.base_url}/query", params={"q": f'CREATE DATABASE "{database}"'}, timeout=self.timeout
        ) as response:
            if response.status >= 300:
                raise TimeSeriesUnavailable(f"influxdb answered {response.status} to CREATE DATABASE")
        self._databases.add(database)

    async def write(self, database: str, lines: Sequence[str]) -> None:
        if not lines:
            return
        try:
            await self._ensure_database(database)
            async with self.session.post(
                f"{self.base_url}/write",
                params={"db": database, "precision": "ns"},
                data="\n".join(lines).encode(),
                timeout=self.timeout,
            ) as response:
                if response.status >= 300:
                    text = (await response.text())[:200]
                    raise TimeSeriesUnavailable(f"influxdb answered {response.status}: {text}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TimeSeriesUnavailable(f"{type(exc).__name__}: {exc}") from exc
        self.written += len(lines)
