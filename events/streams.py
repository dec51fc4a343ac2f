"""Stream, consumer-group and Redis key names: written here and nowhere else."""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field

# Consumer groups. The processors role reads `requests` with one group (the registrar, many requests
# in flight) and `heartbeats` with another (feature/RTP server OPTIONS, never behind a registration);
# the projections role reads `registrations` and `requests` with a third (registrations and history);
# alerts have their own, since InfluxDB may be down when Redis is not.
GROUP_PROCESSORS = "processors"
GROUP_HEARTBEAT = "heartbeat"
GROUP_PROJECTIONS = "projections"
GROUP_ALERTS_PROJECTION = "projection-alerts"
# Outbound registration: the SIP edges share `commands` (one of them sends each REGISTER), the regbot reads the
# edges' answers on `carriers`, and the carriers projection (register_status, eph-gw-ip, alerts) follows it.
GROUP_EDGE = "edge"


def edge_group(ingest_id: str) -> str:
    """The group with which one ingest reads `commands`: each edge sees every command and sends its own."""
    return f"{GROUP_EDGE}:{ingest_id}"


GROUP_REGBOT = "regbot"
GROUP_CARRIERS_PROJECTION = "projection-carriers"

# Keys that jambonz itself reads (SPEC 5.6): no cluster prefix on these two.
ACTIVE_USER_KEY = "active-user"


def user_key(aor: str) -> str:
    """`user:<user>@<host>`: the registration record sbc-outbound and the feature server read."""
    return f"user:{aor}"


@dataclass(frozen=True, slots=True)
class StreamNames:
    """Names for one cluster and partition.

    Every stream of a partition carries the hash tag `{p}` so that one MULTI/EXEC can span
    them on Redis Cluster.
    """

    cluster_id: str = "default"
    partition: int = 0
    prefix: str = field(init=False, repr=False, compare=False)  # "<cluster>:sidecar:{p}", made once

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", f"{self.cluster_id}:sidecar:{{{self.partition}}}")

    @property
    def requests(self) -> str:
        return f"{self.prefix}:requests"

    @property
    def heartbeats(self) -> str:
        """Feature-server and RTP-server heartbeat OPTIONS: a work queue of their own (see GROUP_HEARTBEAT)."""
        return f"{self.prefix}:heartbeats"

    @property
    def refreshes(self) -> str:
        """RegistrationRefreshed facts (cached refreshes change nothing): a work queue for the history, which
        folds them into runs; trimmed once read, like `requests` and `heartbeats`."""
        return f"{self.prefix}:refreshes"

    @property
    def work_queues(self) -> dict[str, tuple[str, ...]]:
        """The streams trimmed by consumption, each with the groups (those of them that exist) that must have
        read an entry first."""
        return {
            self.requests: (GROUP_PROCESSORS,),
            self.heartbeats: (GROUP_HEARTBEAT,),
            self.refreshes: (GROUP_PROJECTIONS, GROUP_ALERTS_PROJECTION),
            # Facts too: their audit is the history, and `replay` starts from the snapshot (see trim_bounds).
            self.registrations: (GROUP_PROJECTIONS, GROUP_ALERTS_PROJECTION),
        }

    @property
    def trim_bounds(self) -> dict[str, str]:
        """Work queues that may be trimmed only up to an id kept in a key: the facts, up to the snapshot."""
        return {self.registrations: self.registrations_snapshot_covers}

    @property
    def registrations(self) -> str:
        return f"{self.prefix}:registrations"

    @property
    def servers(self) -> str:
        return f"{self.prefix}:servers"

    @property
    def carriers(self) -> str:
        return f"{self.prefix}:carriers"

    @property
    def commands(self) -> str:
        return f"{self.prefix}:commands"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    def replies(self, ingest_id: str) -> str:
        return f"{self.prefix}:replies:{ingest_id}"

    def is_replies(self, stream: str) -> bool:
        """Whether a stream is an ingest's reply stream (trimmed by length, not by age)."""
        return stream.startswith(f"{self.prefix}:replies:")

    def checkpoint(self, group: str) -> str:
        """Hash of stream name → id of the last entry the group committed."""
        return f"{self.prefix}:checkpoint:{group}"

    def consumer_alive(self, group: str, consumer: str) -> str:
        """A consumer's liveness key (a TTL refreshed while it runs): a peer takes over the pending
        entries of a consumer whose key has lapsed, and removes it from the group."""
        return f"{self.prefix}:alive:{group}:{consumer}"

    def failures(self, group: str) -> str:
        """Hash of entry id → last handler error, kept until the entry is committed or dead."""
        return f"{self.prefix}:failures:{group}"

    # Projection bookkeeping (our own keys, beside the jambonz ones).
    @property
    def registration_versions(self) -> str:
        """Hash aor → stream id of the last registration event applied to `user:<aor>`."""
        return f"{self.prefix}:registration-version"

    @property
    def registrations_snapshot(self) -> str:
        """The live bindings (records, versions, expiry times), zlib-compressed JSON, for `replay` to start from."""
        return f"{self.prefix}:registrations-snapshot"

    @property
    def registrations_snapshot_covers(self) -> str:
        """The last `registrations` entry the snapshot includes: replay applies only what follows it, and the
        stream is never trimmed past it."""
        return f"{self.prefix}:registrations-snapshot-covers"

    @property
    def expiry_due(self) -> str:
        """Sorted set aor → due time (ms) of each live binding, for the expiry processor."""
        return f"{self.prefix}:expiry-due"

    def history(self, aor: str) -> str:
        return f"{self.prefix}:history:{aor}"

    @property
    def history_pattern(self) -> str:
        """SCAN pattern of every AOR's history (for the archive, which moves their old steps to MySQL)."""
        return f"{self._glob_prefix}:history:*"

    # Brute-force throttling (processors/registrar/throttle.py); `kind` is "ip" or "aor".
    def auth_failures(self, kind: str, subject: str) -> str:
        """Failed authentications of a source IP or an AOR within the window (a counter with a TTL)."""
        return f"{self.prefix}:auth-failures:{kind}:{subject}"

    def auth_block(self, kind: str, subject: str) -> str:
        """A block in force (JSON of its end, start, strike and failures; TTL the block's length)."""
        return f"{self.prefix}:auth-block:{kind}:{subject}"

    def auth_strikes(self, kind: str, subject: str) -> str:
        """How many blocks a subject had lately: each makes the next one twice as long."""
        return f"{self.prefix}:auth-strikes:{kind}:{subject}"

    @property
    def auth_block_pattern(self) -> str:
        """SCAN pattern of every block key (the prefix's `{p}` escaped for glob matching)."""
        return f"{self._glob_prefix}:auth-block:*"

    @property
    def _glob_prefix(self) -> str:
        """The prefix with glob characters escaped (its `{p}` is literal in a SCAN pattern)."""
        return self.prefix.replace("[", "\\[").replace("]", "\\]").replace("*", "\\*").replace("?", "\\?")

    def server_last_seen(self, kind: str) -> str:
        """Sorted set member → time (ms) of its last `open` heartbeat, for one kind (fs, rtp,
        service-url); shared by every sidecar of the cluster, swept by the server expiry."""
        return f"{self.prefix}:server-seen:{kind}"

    # SBC membership (ingest/membership.py): each ingest announces itself; peers clean up after a dead one.
    def sbc_alive(self, ingest_id: str) -> str:
        """An ingest's heartbeat: JSON of its addresses, start, pid and host, with a TTL refreshed while it runs."""
        return f"{self.prefix}:sbc-alive:{ingest_id}"

    @property
    def sbc_seen(self) -> str:
        """Sorted set ingest id → last heartbeat (ms, Redis time); kept for a while after an SBC is gone."""
        return f"{self.prefix}:sbc-seen"

    @property
    def sbc_details(self) -> str:
        """Hash ingest id → JSON of its last heartbeat (and of its clean stop), for `sbcs` once the key lapsed."""
        return f"{self.prefix}:sbc-details"

    @property
    def sbc_cleaned(self) -> str:
        """Hash ingest id → when (ms) a peer deleted a dead SBC's reply stream and edge group: once per death."""
        return f"{self.prefix}:sbc-cleaned"

    @property
    def regbot_state(self) -> str:
        """Hash sip_gateway_sid → JSON of its registration state (last answer, expiry, next attempt)."""
        return f"{self.prefix}:regbot-state"

    # Cluster-scoped jambonz keys (SPEC 3, 5.6).
    @property
    def active_fs(self) -> str:
        return f"{self.cluster_id}:active-fs"

    @property
    def active_rtp(self) -> str:
        return f"{self.cluster_id}:active-rtp"

    @property
    def fs_service_url(self) -> str:
        return f"{self.cluster_id}:fs-service-url"

    @property
    def drained_fs(self) -> str:
        return f"{self.cluster_id}:drained-fs"

    @property
    def regbot_token(self) -> str:
        """The regbot leader lock (SPEC 4.1)."""
        return f"{self.cluster_id}:regbot-token"


def eph_gw_ip_key(ip: str) -> str:
    """`eph-gw-ip:<ip>`: carrier sid → expiry (unix s) of a reg trunk's registration; sbc-inbound reads it."""
    return f"eph-gw-ip:{ip}"


def partition_of(aor: str, partitions: int) -> int:
    """The partition an AOR's events live in (stable across processes and restarts)."""
    if partitions <= 1:
        return 0
    return zlib.crc32(aor.encode()) % partitions


@functools.cache
def partition_names(cluster_id: str, partitions: int) -> tuple[StreamNames, ...]:
    """The names of each partition of a cluster, 0 first (made once: the registrar asks for them at every decision)."""
    return tuple(StreamNames(cluster_id, partition) for partition in range(max(partitions, 1)))
