"""Settings from the environment: jambonz's variables (SPEC 1.6) plus our SIDECAR_ options.

Built once, in the entry point, from a mapping (the process environment, or a dict in tests).
A missing required variable or a bad value raises `ConfigError` naming the variable; the CLI
turns that into exit status 2.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from runtime.errors import ConfigError

DEFAULT_NETWORK_CIDR = "192.168.0.0/24,172.16.0.0/16,10.0.0.0/8"
DEFAULT_TRUSTED_SOURCES = ("127.0.0.0/8", "::1/128")
SIP_TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class MysqlSettings:
    host: str
    user: str
    password: Secret
    database: str
    port: int = 3306
    connection_limit: int = 10
    refresh_ttl_s: float | None = None
    keep_alive_interval_ms: int | None = None
    ssl_ca_file: str | None = None
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None
    reject_unauthorized: bool = True


@dataclass(frozen=True, slots=True)
class RedisSettings:
    host: str = "localhost"
    port: int = 6379
    username: str | None = None
    password: Secret | None = None
    db: int = 0
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master_name: str | None = None
    sentinel_username: str | None = None
    sentinel_password: Secret | None = None
    sentinel_server_password: Secret | None = None
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None


@dataclass(frozen=True, slots=True)
class DrachtioSettings:
    host: str
    port: int
    secret: Secret


@dataclass(frozen=True, slots=True)
class SipListen:
    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SipSettings:
    front: str  # "native" or "drachtio"
    listen: tuple[SipListen, ...]
    public_address: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_message_bytes: int = 65536
    idle_timeout_s: float = 600.0
    reuse_port: bool = False
    network_cidrs: tuple[str, ...] = tuple(DEFAULT_NETWORK_CIDR.split(","))
    # Abuse limits of the native front. Trusted sources (loopback by default) are exempt from the two per-IP ones.
    trusted_sources: tuple[str, ...] = DEFAULT_TRUSTED_SOURCES
    flood_max_per_s: int = 200  # messages per second from one source IP; beyond, dropped (0: no limit)
    message_deadline_s: float = 10.0  # a stream message must be complete this long after its first byte
    max_connections_per_ip: int = 100  # TCP/TLS/WS connections from one source IP at once (0: no limit)
    # Outbound requests (REGISTER, gateway OPTIONS) of the native front: SIDECAR_DNS_SERVERS, SIDECAR_SIP_TLS_VERIFY.
    dns_servers: tuple[tuple[str, int], ...] = ()  # (ip, port) of the DNS servers; none: the system's resolver
    tls_verify: str = "off"  # carriers' TLS certificates: off, system (trust store), or a CA file


@dataclass(frozen=True, slots=True)
class StatsdSettings:
    """StatsD (SPEC 5.2), used when ENABLE_METRICS=1: the STATS_* variables."""

    host: str = "127.0.0.1"
    port: int = 8125
    protocol: str = "udp"  # udp or tcp
    prefix: str = ""
    tags: tuple[str, ...] = ()  # global tags, `key:value`
    sample_rate: float = 1.0
    max_buffer_size: int = 0  # 0: one datagram per metric
    buffer_flush_interval_ms: int | None = None
    telegraf: bool = False  # Telegraf's tag format instead of DogStatsD's


@dataclass(frozen=True, slots=True)
class InfluxV2Settings:
    """InfluxDB 2.x's write API, chosen by SIDECAR_TIME_SERIES_TOKEN (the URL is JAMBONES_TIME_SERIES_HOST).

    jambonz 1.x writes databases; 2.x writes buckets of an org. Each database goes to the bucket of the same
    name unless its bucket setting names another one (None: the database's name).
    """

    token: Secret
    org: str
    alerts_bucket: str | None = None  # SIDECAR_TIME_SERIES_ALERTS_BUCKET, for database `alerts`
    stats_bucket: str | None = None  # SIDECAR_TIME_SERIES_STATS_BUCKET, for database `sbc_sidecar`


@dataclass(frozen=True, slots=True)
class AuthThrottleSettings:
    """Brute-force throttling of the registrar (SIDECAR_AUTH_*): failed authentications that lead to a block."""

    enabled: bool = True
    failures_per_aor: int = 10
    failures_per_ip: int = 30
    window_s: int = 60
    block_s: int = 300
    block_max_s: int = 86_400


@dataclass(frozen=True, slots=True)
class EventLogSettings:
    cluster_id: str = "default"
    partitions: int = 1
    retention_s: int = 7 * 24 * 3600
    batch_size: int = 100
    block_ms: int = 1000
    projection_linger_ms: int = 20
    claim_idle_ms: int = 30_000
    consumer_liveness_ms: int = 3000
    workqueue_grace_s: int = 120
    workqueue_grace_max: int = 200
    snapshot_interval_s: int = 15
    max_deliveries: int = 5
    replies_maxlen: int = 5000
    history_hot_s: int = 24 * 3600  # SIDECAR_HISTORY_HOT_S: older history steps move to MySQL (sidecar_history)


@dataclass(frozen=True, slots=True)
class Settings:
    mysql: MysqlSettings
    redis: RedisSettings
    sip: SipSettings
    eventlog: EventLogSettings
    encryption_secret: Secret
    drachtio: DrachtioSettings | None = None
    mysql_write: MysqlSettings | None = None
    time_series_host: str | None = None
    influx_v2: InfluxV2Settings | None = None  # set: InfluxDB 2.x's API at time_series_host; unset: the v1 API
    log_level: str = "info"
    node_env: str | None = None
    legacy_crypto: bool = False
    hosting: bool = False
    http_listen: tuple[str, int] = ("127.0.0.1", 9090)
    http_user_agent: str | None = None
    webhook_timeout_s: float = 5.0
    nonce_ttl_s: int = 300
    reply_timeout_s: float = 10.0
    max_pending: int = 1000
    max_in_flight: int = 2000
    webhook_max_concurrency: int = 400
    webhook_breaker_failures: int = 5
    webhook_breaker_open_s: float = 30.0
    auth_throttle: AuthThrottleSettings = AuthThrottleSettings()
    ingest_id: str = ""
    sbc_public_address_keep_alive_ms: int = 900_000
    dead_sbc_s: int = 3600
    expires_interval_ms: int = 60_000
    check_expires_interval_ms: int = 20_000
    send_options_ping_interval_s: int = 60
    options_ping_ttl_s: int = 300
    options_response_remove: tuple[int, ...] = ()
    register_response_remove: tuple[int, ...] = ()
    regbot_failure_threshold: int = 3
    regbot_failure_retry_interval_s: int = 300
    regbot_default_expires_s: int = 3600
    regbot_min_expires_s: int = 30
    regbot_contact_use_ip: bool = False
    regbot_user_agent: str = "Jambonz 0.9.6"
    regbot_batch_size: int = 10
    regbot_batch_sleep_ms: int = 250
    regbot_check_interval_s: float = 60.0  # SIDECAR_REGBOT_CHECK_INTERVAL_S: lock renewal and reconciliation
    regbot_lock_ttl_s: int = 70  # SIDECAR_REGBOT_LOCK_TTL_S: the leader lock's TTL
    regbot_start_delay_max_s: float = 14.0  # SIDECAR_REGBOT_START_DELAY_MAX_S: random wait before the first try
    socket_path: str = "/tmp/sbc-sip-sidecar.sock"
    enable_metrics: bool = False
    statsd: StatsdSettings = StatsdSettings()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        return _Reader(os.environ if env is None else env).settings()


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """What the commands that only read or rebuild from the event log need: Redis and the stream options."""

    redis: RedisSettings
    eventlog: EventLogSettings
    mysql: MysqlSettings | None = None  # when JAMBONES_MYSQL_* are set: `history` reads the archive too

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StreamSettings:
        reader = _Reader(os.environ if env is None else env)
        return cls(
            redis=reader.redis(), eventlog=reader.eventlog(), mysql=reader.mysql("JAMBONES_MYSQL", required=False)
        )


class _Reader:
    """Reads and validates one variable at a time, naming it in every error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def required(self, name: str, why: str = "") -> str:
        value = self.raw(name)
        if value is None:
            raise ConfigError(name, f"is required{why}")
        return value

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def integer(self, name: str, default: int, *, minimum: int | None = 0, maximum: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(name, f"must be an integer, got {value!r}") from None
        if minimum is not None and number < minimum:
            raise ConfigError(name, f"must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise ConfigError(name, f"must be at most {maximum}, got {number}")
        return number

    def optional_int(self, name: str) -> int | None:
        return None if self.raw(name) is None else self.integer(name, 0)

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(name, f"must be a number, got {value!r}") from None
        if number < minimum or number != number:
            raise ConfigError(name, f"must be at least {minimum}, got {value!r}")
        return number

    def flag(self, name: str) -> bool:
        """jambonz truthiness: set and non-empty means on (even "0", as JAMBONES_HOSTING)."""
        return self.raw(name) is not None

    def status_codes(self, name: str) -> tuple[int, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        codes = []
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or not 100 <= int(part) <= 699:
                raise ConfigError(name, f"must be a comma list of SIP status codes, got {part!r}")
            codes.append(int(part))
        return tuple(codes)

    def secret(self, name: str) -> Secret | None:
        value = self.env.get(name)
        return Secret(value) if value else None

    def hostport(self, name: str, default: tuple[str, int]) -> tuple[str, int]:
        value = self.raw(name)
        if value is None:
            return default
        host, _, port = value.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(name, f"must be host:port, got {value!r}")
        return host, int(port)

    def mysql(self, prefix: str, *, required: bool) -> MysqlSettings | None:
        names = [f"{prefix}_{part}" for part in ("HOST", "USER", "PASSWORD", "DATABASE")]
        if not required and not all(name in self.env for name in names):
            return None
        host, user, database = (self.required(n) for n in (names[0], names[1], names[3]))
        if names[2] not in self.env:
            raise ConfigError(names[2], "is required (it may be empty)")
        ttl = self.raw("JAMBONES_MYSQL_REFRESH_TTL")
        return MysqlSettings(
            host=host,
            user=user,
            password=Secret(self.env[names[2]]),
            database=database,
            port=self.integer(f"{prefix}_PORT", 3306, minimum=1, maximum=65535),
            connection_limit=self.integer(f"{prefix}_CONNECTION_LIMIT", 10, minimum=1),
            refresh_ttl_s=None if ttl is None else self.number("JAMBONES_MYSQL_REFRESH_TTL", 0.0),
            keep_alive_interval_ms=self.optional_int("JAMBONES_MYSQL_KEEP_ALIVE_INTERVAL_MS"),
            ssl_ca_file=self.raw("JAMBONES_MYSQL_SSL_CA_FILE"),
            ssl_cert_file=self.raw("JAMBONES_MYSQL_SSL_CERT_FILE"),
            ssl_key_file=self.raw("JAMBONES_MYSQL_SSL_KEY_FILE"),
            reject_unauthorized=self.raw("JAMBONES_MYSQL_REJECT_UNAUTHORIZED") != "0",
        )

    def redis(self) -> RedisSettings:
        sentinels_text = self.raw("JAMBONES_REDIS_SENTINELS")
        sentinels: list[tuple[str, int]] = []
        master = self.raw("JAMBONES_REDIS_SENTINEL_MASTER_NAME")
        if sentinels_text:
            for item in sentinels_text.split(","):
                host, _, port = item.strip().partition(":")
                if not host or (port and not port.isdigit()):
                    raise ConfigError("JAMBONES_REDIS_SENTINELS", f"bad entry {item!r} (want host[:port])")
                sentinels.append((host, int(port) if port else 26379))
            if master is None:
                raise ConfigError("JAMBONES_REDIS_SENTINEL_MASTER_NAME", "is required with JAMBONES_REDIS_SENTINELS")
        elif self.raw("JAMBONES_REDIS_HOST") is None:
            raise ConfigError("JAMBONES_REDIS_HOST", "is required (or JAMBONES_REDIS_SENTINELS)")
        return RedisSettings(
            host=self.text("JAMBONES_REDIS_HOST", "localhost"),
            port=self.integer("JAMBONES_REDIS_PORT", 6379, minimum=1, maximum=65535),
            username=self.raw("JAMBONES_REDIS_USERNAME"),
            password=self.secret("JAMBONES_REDIS_PASSWORD"),
            db=self.integer("SIDECAR_REDIS_DB", 0, maximum=15),
            sentinels=tuple(sentinels),
            sentinel_master_name=master,
            sentinel_username=self.raw("JAMBONES_REDIS_SENTINEL_USERNAME"),
            sentinel_password=self.secret("JAMBONES_REDIS_SENTINEL_PASSWORD"),
            sentinel_server_password=self.secret("JAMBONES_REDIS_SENTINEL_SERVER_PASSWORD"),
            tls=self.flag("ENABLE_JAMBONES_REDIS_TLS"),
            tls_ca_file=self.raw("JAMBONES_REDIS_TLS_CA_FILE"),
            tls_cert_file=self.raw("JAMBONES_REDIS_TLS_CERT_FILE"),
            tls_key_file=self.raw("JAMBONES_REDIS_TLS_KEY_FILE"),
        )

    def sip_listen(self) -> tuple[SipListen, ...]:
        name = "SIDECAR_SIP_LISTEN"
        text = self.text(name, "udp:0.0.0.0:5060,tcp:0.0.0.0:5060")
        listeners = []
        for item in text.split(","):
            item = item.strip()
            transport, _, rest = item.partition(":")
            host, _, port = rest.rpartition(":")
            host = host.strip("[]")
            transport = transport.lower()
            if transport not in SIP_TRANSPORTS or not host or not port.isdigit() or int(port) > 65535:
                raise ConfigError(
                    name,
                    f"bad listener {item!r} (want transport:host:port, transport one of {', '.join(SIP_TRANSPORTS)})",
                )
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ConfigError(name, f"bad listener {item!r}: {host!r} is not an IP address") from None
            listeners.append(SipListen(transport, host, int(port)))
        return tuple(listeners)

    def statsd(self) -> StatsdSettings:
        protocol = self.text("STATS_PROTOCOL", "udp").lower()
        if protocol not in ("udp", "tcp"):
            raise ConfigError("STATS_PROTOCOL", f"must be udp or tcp, got {protocol!r}")
        sample_rate = self.number("STATS_SAMPLE_RATE", 1.0)
        if sample_rate > 1:
            raise ConfigError("STATS_SAMPLE_RATE", f"must be between 0 and 1, got {sample_rate}")
        tags = tuple(tag.strip() for tag in (self.raw("STATS_TAGS") or "").split(",") if tag.strip())
        return StatsdSettings(
            host=self.text("STATS_HOST", "127.0.0.1"),
            port=self.integer("STATS_PORT", 8125, minimum=1, maximum=65535),
            protocol=protocol,
            prefix=self.raw("STATS_PREFIX") or "",
            tags=tags,
            sample_rate=sample_rate,
            max_buffer_size=self.integer("STATS_MAX_BUFFER_SIZE", 0),
            buffer_flush_interval_ms=self.optional_int("STATS_BUFFER_FLUSH_INTERVAL"),
            telegraf=self.raw("STATS_TELEGRAF") in ("1", "true"),
        )

    def trusted_sources(self) -> tuple[str, ...]:
        """SIDECAR_SIP_TRUSTED_SOURCES: CIDRs exempt from the per-IP flood and connection limits (`none`: no one)."""
        name = "SIDECAR_SIP_TRUSTED_SOURCES"
        text = self.raw(name)
        if text is None:
            return DEFAULT_TRUSTED_SOURCES
        if text.lower() == "none":
            return ()
        return _cidr_list(name, text)

    def influx_v2(self) -> InfluxV2Settings | None:
        """InfluxDB 2.x when SIDECAR_TIME_SERIES_TOKEN is set: it needs the host and the org; buckets are optional."""
        token_name, org_name = "SIDECAR_TIME_SERIES_TOKEN", "SIDECAR_TIME_SERIES_ORG"
        bucket_names = ("SIDECAR_TIME_SERIES_ALERTS_BUCKET", "SIDECAR_TIME_SERIES_STATS_BUCKET")
        token = self.raw(token_name)
        if token is None:
            for name in (org_name, *bucket_names):
                if self.raw(name) is not None:
                    raise ConfigError(token_name, f"is required with {name} (InfluxDB 2.x)")
            return None
        if self.raw("JAMBONES_TIME_SERIES_HOST") is None:
            raise ConfigError("JAMBONES_TIME_SERIES_HOST", f"is required with {token_name}")
        org = self.required(org_name, f" with {token_name}")
        alerts_bucket, stats_bucket = (self.bucket(name) for name in bucket_names)
        return InfluxV2Settings(token=Secret(token), org=org, alerts_bucket=alerts_bucket, stats_bucket=stats_bucket)

    def bucket(self, name: str) -> str | None:
        value = self.raw(name)
        if value is not None and value.startswith("_"):
            raise ConfigError(name, f"must not start with '_' (InfluxDB's system buckets), got {value!r}")
        return value

    def dns_servers(self) -> tuple[tuple[str, int], ...]:
        """SIDECAR_DNS_SERVERS: `ip[:port]` list (IPv6 as `[ip]:port`) the outbound requests' lookups go to."""
        name = "SIDECAR_DNS_SERVERS"
        servers = []
        for item in (self.raw(name) or "").split(","):
            item = item.strip()
            if not item:
                continue
            if item.startswith("["):
                host, _, rest = item[1:].partition("]")
                port = rest[1:] if rest.startswith(":") else rest
            else:
                host, _, port = item.partition(":") if item.count(":") == 1 else (item, "", "")
            try:
                address = str(ipaddress.ip_address(host))
            except ValueError:
                raise ConfigError(name, f"bad server {item!r} (want ip[:port], IPv6 as [ip]:port)") from None
            if port and (not port.isdigit() or not 0 < int(port) <= 65535):
                raise ConfigError(name, f"bad port in {item!r}")
            servers.append((address, int(port) if port else 53))
        return tuple(servers)

    def tls_verify(self) -> str:
        """SIDECAR_SIP_TLS_VERIFY: off, system, or the path of a file of CA certificates (checked to exist)."""
        name = "SIDECAR_SIP_TLS_VERIFY"
        value = self.raw(name) or "off"
        if value.lower() in ("off", "system"):
            return value.lower()
        if not os.path.isfile(value):
            raise ConfigError(name, f"must be off, system or a CA file, got {value!r} (no such file)")
        return value

    def auth_throttle(self) -> AuthThrottleSettings:
        enabled = (self.raw("SIDECAR_AUTH_THROTTLE") or "on").lower()
        if enabled not in ("on", "off", "1", "0", "true", "false", "yes", "no"):
            raise ConfigError("SIDECAR_AUTH_THROTTLE", f"must be on or off, got {enabled!r}")
        block_s = self.integer("SIDECAR_AUTH_BLOCK_S", 300, minimum=1)
        block_max_s = self.integer("SIDECAR_AUTH_BLOCK_MAX_S", 86_400, minimum=1)
        if block_max_s < block_s:
            raise ConfigError("SIDECAR_AUTH_BLOCK_MAX_S", f"must be at least SIDECAR_AUTH_BLOCK_S ({block_s})")
        return AuthThrottleSettings(
            enabled=enabled in ("on", "1", "true", "yes"),
            failures_per_aor=self.integer("SIDECAR_AUTH_FAILURES_PER_AOR", 10, minimum=1),
            failures_per_ip=self.integer("SIDECAR_AUTH_FAILURES_PER_IP", 30, minimum=1),
            window_s=self.integer("SIDECAR_AUTH_FAILURE_WINDOW_S", 60, minimum=1),
            block_s=block_s,
            block_max_s=block_max_s,
        )

    def cidrs(self) -> tuple[str, ...]:
        name = "JAMBONES_NETWORK_CIDR"
        return _cidr_list(name, self.text(name, DEFAULT_NETWORK_CIDR))

    def eventlog(self) -> EventLogSettings:
        return EventLogSettings(
            cluster_id=self.text("JAMBONES_CLUSTER_ID", "default"),
            partitions=self.integer("SIDECAR_PARTITIONS", 1, minimum=1, maximum=1024),
            retention_s=self.integer("SIDECAR_RETENTION_S", 7 * 24 * 3600, minimum=60),
            batch_size=self.integer("SIDECAR_BATCH_SIZE", 100, minimum=1, maximum=10_000),
            block_ms=self.integer("SIDECAR_BLOCK_MS", 1000, minimum=1),
            projection_linger_ms=self.integer("SIDECAR_PROJECTION_LINGER_MS", 20, minimum=0, maximum=10_000),
            claim_idle_ms=self.integer("SIDECAR_CLAIM_IDLE_MS", 30_000, minimum=100),
            consumer_liveness_ms=self.integer("SIDECAR_CONSUMER_LIVENESS_MS", 3000, minimum=300),
            workqueue_grace_s=self.integer("SIDECAR_WORKQUEUE_GRACE_S", 120, minimum=0),
            workqueue_grace_max=self.integer("SIDECAR_WORKQUEUE_GRACE_MAX", 200, minimum=0),
            snapshot_interval_s=self.integer("SIDECAR_SNAPSHOT_INTERVAL_S", 15, minimum=1),
            max_deliveries=self.integer("SIDECAR_MAX_DELIVERIES", 5, minimum=1),
            replies_maxlen=self.integer("SIDECAR_REPLIES_MAXLEN", 5000, minimum=100),
            history_hot_s=self.integer("SIDECAR_HISTORY_HOT_S", 24 * 3600, minimum=60),
        )

    def settings(self) -> Settings:
        mysql = self.mysql("JAMBONES_MYSQL", required=True)
        assert mysql is not None
        redis = self.redis()
        drachtio = None
        front = self.text("SIDECAR_SIP_FRONT", "drachtio" if self.raw("DRACHTIO_HOST") else "native").lower()
        if front not in ("native", "drachtio"):
            raise ConfigError("SIDECAR_SIP_FRONT", f"must be native or drachtio, got {front!r}")
        if front == "drachtio":
            why = " with SIDECAR_SIP_FRONT=drachtio"
            host = self.required("DRACHTIO_HOST", why)
            self.required("DRACHTIO_PORT", why)
            drachtio = DrachtioSettings(
                host=host,
                port=self.integer("DRACHTIO_PORT", 9022, minimum=1, maximum=65535),
                secret=Secret(self.required("DRACHTIO_SECRET", why)),
            )
        secret = self.raw("ENCRYPTION_SECRET") or self.raw("JWT_SECRET")
        if secret is None:
            raise ConfigError("ENCRYPTION_SECRET", "is required (or the deprecated JWT_SECRET)")
        tls_cert, tls_key = self.raw("SIDECAR_TLS_CERT"), self.raw("SIDECAR_TLS_KEY")
        listen = self.sip_listen() if front == "native" else ()
        if any(item.transport in ("tls", "wss") for item in listen):
            if tls_cert is None:
                raise ConfigError("SIDECAR_TLS_CERT", "is required for tls/wss listeners")
            if tls_key is None:
                raise ConfigError("SIDECAR_TLS_KEY", "is required for tls/wss listeners")
        log_level = self.text("JAMBONES_LOGLEVEL", "info").lower()
        if log_level not in ("trace", "debug", "info", "warn", "warning", "error", "fatal", "silent"):
            raise ConfigError("JAMBONES_LOGLEVEL", f"unknown level {log_level!r}")
        eventlog = self.eventlog()
        webhook_timeout_s = self.number("SIDECAR_WEBHOOK_TIMEOUT_S", 5.0, minimum=0.01)
        if eventlog.claim_idle_ms <= webhook_timeout_s * 1000:
            raise ConfigError(
                "SIDECAR_CLAIM_IDLE_MS",
                "must exceed SIDECAR_WEBHOOK_TIMEOUT_S, or live work would be re-claimed while still in progress",
            )
        return Settings(
            mysql=mysql,
            mysql_write=self.mysql("JAMBONES_MYSQL_WRITE", required=False),
            redis=redis,
            drachtio=drachtio,
            sip=SipSettings(
                front=front,
                listen=listen,
                public_address=self.raw("SIDECAR_SIP_PUBLIC_ADDRESS"),
                tls_cert=tls_cert,
                tls_key=tls_key,
                max_message_bytes=self.integer("SIDECAR_SIP_MAX_MESSAGE_BYTES", 65536, minimum=1024),
                idle_timeout_s=self.number("SIDECAR_SIP_IDLE_TIMEOUT_S", 600.0, minimum=1.0),
                reuse_port=self.raw("SIDECAR_SIP_REUSE_PORT") in ("1", "true", "yes"),
                network_cidrs=self.cidrs(),
                trusted_sources=self.trusted_sources(),
                flood_max_per_s=self.integer("SIDECAR_SIP_FLOOD_MAX_PER_S", 200, minimum=0),
                message_deadline_s=self.number("SIDECAR_SIP_MESSAGE_DEADLINE_S", 10.0, minimum=0.1),
                max_connections_per_ip=self.integer("SIDECAR_SIP_MAX_CONNECTIONS_PER_IP", 100, minimum=0),
                dns_servers=self.dns_servers(),
                tls_verify=self.tls_verify(),
            ),
            eventlog=eventlog,
            encryption_secret=Secret(secret),
            time_series_host=self.raw("JAMBONES_TIME_SERIES_HOST"),
            influx_v2=self.influx_v2(),
            log_level=log_level,
            node_env=self.raw("NODE_ENV"),
            legacy_crypto=self.flag("LEGACY_CRYPTO"),
            hosting=self.flag("JAMBONES_HOSTING"),
            http_listen=self.hostport("SIDECAR_HTTP_LISTEN", ("127.0.0.1", 9090)),
            http_user_agent=self.raw("JAMBONES_HTTP_USER_AGENT_HEADER"),
            webhook_timeout_s=webhook_timeout_s,
            nonce_ttl_s=self.integer("SIDECAR_NONCE_TTL_S", 300, minimum=1),
            reply_timeout_s=self.number("SIDECAR_REPLY_TIMEOUT_S", 10.0, minimum=0.1),
            max_pending=self.integer("SIDECAR_MAX_PENDING", 1000, minimum=0),
            max_in_flight=self.integer("SIDECAR_MAX_IN_FLIGHT", 2000, minimum=1),
            webhook_max_concurrency=self.integer("SIDECAR_WEBHOOK_MAX_CONCURRENCY", 400, minimum=1),
            webhook_breaker_failures=self.integer("SIDECAR_WEBHOOK_BREAKER_FAILURES", 5, minimum=0),
            webhook_breaker_open_s=self.number("SIDECAR_WEBHOOK_BREAKER_OPEN_S", 30.0, minimum=0.1),
            auth_throttle=self.auth_throttle(),
            ingest_id=self.text("SIDECAR_INGEST_ID", f"{socket.gethostname()}-{os.getpid()}"),
            sbc_public_address_keep_alive_ms=self.integer("SBC_PUBLIC_ADDRESS_KEEP_ALIVE_IN_MILISECOND", 900_000),
            dead_sbc_s=self.integer("DEAD_SBC_IN_SECOND", 3600),
            expires_interval_ms=self.integer("EXPIRES_INTERVAL", 60_000, minimum=1),
            check_expires_interval_ms=self.integer("CHECK_EXPIRES_INTERVAL", 20_000, minimum=1),
            send_options_ping_interval_s=self.integer("SEND_OPTIONS_PING_INTERVAL", 60, minimum=1),
            options_ping_ttl_s=self.integer("OPTIONS_PING_TTL", 300, minimum=1),
            options_response_remove=self.status_codes("OPTIONS_RESPONSE_REMOVE"),
            register_response_remove=self.status_codes("REGISTER_RESPONSE_REMOVE"),
            regbot_failure_threshold=self.integer("JAMBONES_REGBOT_REGISTER_FAILURE_THRESHOLD", 3, minimum=1),
            regbot_failure_retry_interval_s=self.integer("JAMBONES_REGBOT_FAILURE_RETRY_INTERVAL", 300),
            regbot_default_expires_s=self.integer("JAMBONES_REGBOT_DEFAULT_EXPIRES_INTERVAL", 3600, minimum=1),
            regbot_min_expires_s=self.integer("JAMBONES_REGBOT_MIN_EXPIRES_INTERVAL", 30),
            regbot_contact_use_ip=self.flag("JAMBONES_REGBOT_CONTACT_USE_IP"),
            regbot_user_agent=self.text("JAMBONES_REGBOT_USER_AGENT", "Jambonz 0.9.6"),
            regbot_batch_size=self.integer("JAMBONES_REGBOT_BATCH_SIZE", 10, minimum=1),
            regbot_batch_sleep_ms=self.integer("JAMBONES_REGBOT_BATCH_SLEEP_MS", 250),
            regbot_check_interval_s=self.number("SIDECAR_REGBOT_CHECK_INTERVAL_S", 60.0, minimum=0.1),
            regbot_lock_ttl_s=self.integer("SIDECAR_REGBOT_LOCK_TTL_S", 70, minimum=1),
            regbot_start_delay_max_s=self.number("SIDECAR_REGBOT_START_DELAY_MAX_S", 14.0),
            socket_path=self.text("SBC_SOCKET_PATH", "/tmp/sbc-sip-sidecar.sock"),
            enable_metrics=self.raw("ENABLE_METRICS") == "1",
            statsd=self.statsd(),
        )


def _cidr_list(name: str, text: str) -> tuple[str, ...]:
    """A comma-separated list of CIDRs, each checked; the variable is named when one is not a CIDR."""
    cidrs = tuple(part.strip() for part in text.split(",") if part.strip())
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(name, f"{cidr!r} is not a CIDR") from None
    return cidrs
