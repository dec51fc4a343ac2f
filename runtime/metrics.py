"""The process's metrics: Prometheus families for `/metrics`, and jambonz's StatsD metrics (SPEC 5.2).

One `Metrics` per process (tests run several services in one interpreter, so nothing is registered in
prometheus_client's global registry). The code that observes something calls one method here, which
feeds Prometheus and, when `ENABLE_METRICS=1`, StatsD with the original's names, tags and types:

- a REGISTER answered: `sbc_sidecar_registration_answer_seconds{status,path}`; StatsD
  `sbc.registration.total.response_time` (ms, `status:<code>`), or `sbc.registration.cached.response_time`
  for an answer from the cached binding;
- an authentication verdict (200 or 403, webhook or clients table): `sbc_sidecar_auth_seconds{path,status}`;
  StatsD `app.hook.response_time` (ms, `hook_type:auth`, `status:<code>`);
- a webhook HTTP call: `sbc_sidecar_webhook_seconds{status}`;
- registered users, every 30 s: `sbc_sidecar_registered_users`, `sbc_sidecar_registrations_active`; StatsD
  gauge `sbc.users.count`;
- feature and RTP servers: `sbc_sidecar_feature_servers`, `sbc_sidecar_rtp_servers`; StatsD gauges
  `featureservers`, `rtpservers`;
- streams, sampled at each scrape: `sbc_sidecar_stream_lag_entries{stream,group}`,
  `sbc_sidecar_stream_pending_entries{stream,group}`, `sbc_sidecar_dead_entries`;
- REGISTERs shed by an overloaded ingest: `sbc_sidecar_requests_shed_total`.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from runtime.statsd import StatsdClient
from runtime.webclient import HttpClient, HttpError, HttpResponse

# Registration answers take from ~1 ms (a challenge) to a webhook's timeout (5 s by default).
ANSWER_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# What `/metrics` reports under a name of its own besides the workers' untyped counters.
SHED_COUNTER_KEY = "ingest_requests_shed"


@dataclass(slots=True)
class AuthCall:
    """Filled in while one REGISTER is decided: how its webhook call went, if one was made."""

    webhook_s: float | None = None
    webhook_status: str | None = None  # the HTTP status, "error" or "cancelled"


# Set by whoever decides a REGISTER (one task per decision), read by the webhook client inside it.
current_auth_call: contextvars.ContextVar[AuthCall | None] = contextvars.ContextVar("current_auth_call", default=None)


class Metrics:
    """Prometheus families of one process, and its StatsD client (None unless ENABLE_METRICS=1)."""

    def __init__(self, statsd: StatsdClient | None = None) -> None:
        self.statsd = statsd
        self._answer_children: dict[tuple[int, str], Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.answer_seconds = Histogram(
            "sbc_sidecar_registration_answer_seconds",
            "Time from a REGISTER's arrival to its decided answer, by SIP status and how it was decided "
            "(cached, webhook, clients, challenge, other)",
            ["status", "path"],
            buckets=ANSWER_BUCKETS_S,
            registry=registry,
        )
        self.auth_seconds = Histogram(
            "sbc_sidecar_auth_seconds",
            "Authentication round trips that gave a verdict (200 or 403), by path (webhook, clients)",
            ["path", "status"],
            buckets=ANSWER_BUCKETS_S,
            registry=registry,
        )
        self.webhook_seconds = Histogram(
            "sbc_sidecar_webhook_seconds",
            "Registration webhook HTTP calls, by HTTP status (or error)",
            ["status"],
            buckets=ANSWER_BUCKETS_S,
            registry=registry,
        )
        self.requests_shed = Counter(
            "sbc_sidecar_requests_shed",
            "REGISTERs answered 503 because too many waited for a decision",
            registry=registry,
        )
        self.registered_users = Gauge(
            "sbc_sidecar_registered_users", "Distinct registered user parts (sbc.users.count)", registry=registry
        )
        self.active_registrations = Gauge(
            "sbc_sidecar_registrations_active", "Live entries of active-user", registry=registry
        )
        self.feature_servers = Gauge("sbc_sidecar_feature_servers", "Members of active-fs", registry=registry)
        self.rtp_servers = Gauge("sbc_sidecar_rtp_servers", "Members of active-rtp", registry=registry)
        self.stream_lag = Gauge(
            "sbc_sidecar_stream_lag_entries",
            "Entries of a stream not yet read by a consumer group",
            ["stream", "group"],
            registry=registry,
        )
        self.stream_pending = Gauge(
            "sbc_sidecar_stream_pending_entries",
            "Entries read by a consumer group and not yet acknowledged",
            ["stream", "group"],
            registry=registry,
        )
        self.dead_entries = Gauge("sbc_sidecar_dead_entries", "Entries in the dead-letter stream", registry=registry)
        self._shed_seen = 0.0

    # --- observations -------------------------------------------------------------------------

    def registration_answered(self, status: int, path: str, seconds: float) -> None:
        # The labelled child of each (status, path) is looked up once: labels() costs more than observe().
        child = self._answer_children.get((status, path))
        if child is None:
            child = self._answer_children[(status, path)] = self.answer_seconds.labels(str(status), path)
        child.observe(seconds)
        if self.statsd is not None:
            name = (
                "sbc.registration.cached.response_time" if path == "cached" else "sbc.registration.total.response_time"
            )
            self.statsd.histogram(name, round(seconds * 1000, 3), [f"status:{status}"])

    def auth_answered(self, path: str, status: int, seconds: float) -> None:
        self.auth_seconds.labels(path, str(status)).observe(seconds)
        if self.statsd is not None:
            self.statsd.histogram(
                "app.hook.response_time", round(seconds * 1000, 3), ["hook_type:auth", f"status:{status}"]
            )

    def webhook_called(self, status: str, seconds: float) -> None:
        self.webhook_seconds.labels(status).observe(seconds)

    def users_counted(self, users: int, active: int) -> None:
        self.registered_users.set(users)
        self.active_registrations.set(active)
        if self.statsd is not None:
            self.statsd.gauge("sbc.users.count", users)

    def servers_counted(self, feature_servers: int, rtp_servers: int) -> None:
        self.feature_servers.set(feature_servers)
        self.rtp_servers.set(rtp_servers)
        if self.statsd is not None:
            self.statsd.gauge("featureservers", feature_servers)
            self.statsd.gauge("rtpservers", rtp_servers)

    def streams_sampled(self, groups: Mapping[tuple[str, str], tuple[int | None, int]], dead: int) -> None:
        """(stream kind, group) → (lag or None when Redis cannot tell, pending); dead-letter length."""
        for (stream, group), (lag, pending) in groups.items():
            if lag is not None:
                self.stream_lag.labels(stream, group).set(lag)
            self.stream_pending.labels(stream, group).set(pending)
        self.dead_entries.set(dead)

    # --- exposition ---------------------------------------------------------------------------

    def exposition(self, counters: Mapping[str, float]) -> str:
        """The `/metrics` text: the workers' counters as untyped `sbc_sidecar_<name> <value>` lines (the
        names the service always had), then the typed families."""
        shed = counters.get(SHED_COUNTER_KEY)
        if shed is not None and shed > self._shed_seen:
            self.requests_shed.inc(shed - self._shed_seen)
            self._shed_seen = shed
        lines = [f"sbc_sidecar_{key} {value}" for key, value in sorted(counters.items())]
        return "\n".join(lines) + "\n" + generate_latest(self.registry).decode()


class TimedHttpClient(HttpClient):
    """The webhook's HTTP client, timing each call into `Metrics` and into the decision's `AuthCall`."""

    def __init__(self, metrics: Metrics, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.metrics = metrics

    async def request(self, method: str, url: str, **kwargs: object) -> HttpResponse:  # type: ignore[override]
        started = time.perf_counter()
        try:
            response = await super().request(method, url, **kwargs)  # type: ignore[arg-type]
        except asyncio.CancelledError:  # the caller's deadline (a webhook timeout), or a stop
            self._observe("cancelled", started)
            raise
        except HttpError:
            self._observe("error", started)
            raise
        self._observe(str(response.status), started)
        return response

    def _observe(self, status: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        call = current_auth_call.get()
        if call is not None:
            call.webhook_s = elapsed
            call.webhook_status = status
        self.metrics.webhook_called(status, elapsed)
