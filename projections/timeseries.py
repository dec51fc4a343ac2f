"""Writing time series to InfluxDB: the line protocol and the one writer interface the projections use.

`InfluxV1Writer` posts lines to `/write?db=<database>` (InfluxDB 1.6-1.8, jambonz's) and creates each
database on first use, as jambonz's `influx` client does. `InfluxV2Writer` writes the same lines to
InfluxDB 2.x's `/api/v2/write` with influxdb-client's async API: a token, an org, and a bucket per
database (the database's name unless a setting names another bucket); it creates no bucket, since a
write token usually may not, and an unknown bucket is refused (404) like an unreachable server.
`open_time_series` picks one from the settings. Points carry their own timestamps (nanoseconds), so a
re-delivered event rewrites its point instead of adding one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import aiohttp

from runtime.settings import InfluxV2Settings, Settings

if TYPE_CHECKING:
    from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
    from influxdb_client.client.write_api_async import WriteApiAsync

log = logging.getLogger(__name__)

FieldValue = str | int | float | bool


class TimeSeriesUnavailable(Exception):
    """InfluxDB could not be reached or refused the points; the caller keeps them for a retry."""


class TimeSeriesWriter(Protocol):
    async def write(self, database: str, lines: Sequence[str]) -> None: ...


async def write_batch(
    writer: TimeSeriesWriter | None, database: str, lines: Sequence[str], what: str
) -> int | TimeSeriesUnavailable:
    """A consumer batch's points in one write: how many were written (none without lines or a writer), or the fault,
    logged, that the caller fails the batch's deliveries with so that they are delivered again."""
    if not lines or writer is None:
        return 0
    try:
        await writer.write(database, lines)
    except TimeSeriesUnavailable as exc:
        log.warning("%s not written, will retry count=%d error=%s", what, len(lines), exc)
        return exc
    return len(lines)


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


class InfluxV2Writer:
    """A TimeSeriesWriter over InfluxDB 2.x's write API (influxdb-client's async client), an async context manager.

    `buckets` maps a database to its bucket; a database not in it is written to the bucket of its name.
    """

    def __init__(
        self, base_url: str, settings: InfluxV2Settings, buckets: Mapping[str, str], timeout_s: float = 5.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.settings = settings
        self.buckets = dict(buckets)
        self.timeout_s = timeout_s
        self._client: InfluxDBClientAsync | None = None
        self._write_api: WriteApiAsync | None = None
        self.written = 0

    async def __aenter__(self) -> InfluxV2Writer:
        if self._client is None:  # the client wants a running loop, so it is made here, not in __init__
            from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync  # v1 users never load it

            self._client = InfluxDBClientAsync(
                url=self.base_url,
                token=self.settings.token.reveal(),
                org=self.settings.org,
                timeout=int(self.timeout_s * 1000),
            )
            self._write_api = self._client.write_api()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        client, self._client, self._write_api = self._client, None, None
        if client is not None:
            await client.close()

    def bucket_of(self, database: str) -> str:
        return self.buckets.get(database, database)

    async def write(self, database: str, lines: Sequence[str]) -> None:
        if not lines:
            return
        if self._write_api is None:
            raise RuntimeError("InfluxV2Writer used outside its async with block")
        from influxdb_client.client.exceptions import InfluxDBError
        from influxdb_client.domain.write_precision import WritePrecision

        bucket = self.bucket_of(database)
        try:
            accepted = await self._write_api.write(
                bucket=bucket,
                org=self.settings.org,
                record=list(lines),
                write_precision=WritePrecision.NS,  # type: ignore[arg-type]  # the library types its constant str
            )
        except InfluxDBError as exc:  # an answer other than 2xx; its message is the body's, never our headers
            status = getattr(exc, "status", None) or "no answer"
            message = exc.message.decode(errors="replace") if isinstance(exc.message, bytes) else str(exc.message)
            raise TimeSeriesUnavailable(f"influxdb answered {status} bucket={bucket}: {message[:200]}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TimeSeriesUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if not accepted:  # a 2xx other than 204 (or 201): not what a write that took the points answers
            raise TimeSeriesUnavailable(f"influxdb did not confirm the write bucket={bucket}")
        self.written += len(lines)


@asynccontextmanager
async def open_time_series(
    settings: Settings, http: aiohttp.ClientSession | None
) -> AsyncIterator[TimeSeriesWriter | None]:
    """The process's writer: none without `JAMBONES_TIME_SERIES_HOST`, InfluxDB 2.x's with a token, else v1's
    (on `http`, the process's pooled session; none without one)."""
    from projections.alerts import DATABASE as ALERTS_DATABASE
    from projections.stats import DATABASE as STATS_DATABASE

    host = settings.time_series_host
    v2 = settings.influx_v2
    if host is None:
        yield None
    elif v2 is not None:
        buckets = {
            ALERTS_DATABASE: v2.alerts_bucket or ALERTS_DATABASE,
            STATS_DATABASE: v2.stats_bucket or STATS_DATABASE,
        }
        async with InfluxV2Writer(influx_base_url(host), v2, buckets) as writer:
            mapping = ",".join(f"{database}->{bucket}" for database, bucket in buckets.items())
            log.info("time series to influxdb 2.x url=%s org=%s buckets=%s", writer.base_url, v2.org, mapping)
            yield writer
    else:
        yield InfluxV1Writer(http, influx_base_url(host)) if http is not None else None
