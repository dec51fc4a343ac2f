"""The servers projection: server facts → `<cluster>:active-fs`, `active-rtp`, `fs-service-url` (SPEC 3, 5.6).

The sets hold exactly what jambonz reads: `active-fs` members are `<source ip>:<source port>`,
`active-rtp` members the bare source IP, `fs-service-url` members the X-FS-ServiceUrl text.
Beside each set a sorted set (`StreamNames.server_last_seen`) keeps every member's last `open`
heartbeat in ms, shared by the sidecars of the cluster; the expiry sweep reads it.

Where the writes run (the choice asked for in issue 5): the heartbeat processor commits them
itself, in the same MULTI/EXEC as its fact, its SIP reply and its XACK, instead of a separate
consumer group applying the facts later. Reasons:

- The OPTIONS answer carries `X-Members`, the size of the set *after* this heartbeat. With the
  writes in the commit, the count the shell computes (one read per batch, then each fact applied
  in order in `Membership`) is the state that becomes visible together with the reply; with a
  lagging projection the answer would be a prediction and sbc-inbound could read a set older
  than the answer the feature server just got.
- All or nothing: a consumer that dies before its commit leaves no half-applied heartbeat, and the
  peer that re-claims the entry decides it again from the sets as they are.
- One group fewer on the hot path; nothing of the order-safety machinery a second reader would
  need (the commands below are idempotent anyway: SADD/SREM, ZADD GT/ZREM).

The expiry sweep removes members with a script that claims each lapsed member atomically (see
`processors.heartbeat.expiry`), using the keys named here. `writes_for` of every fact, applied
in stream order, rebuilds the sets and the last-seen indexes from the `servers` stream.

Known limit: the jambonz set names carry no hash tag, so on Redis Cluster these writes do not
share a slot with the streams; the commit assumes a single Redis (or one shard), like jambonz.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from datetime import datetime

from events import ServerCheckedIn, ServerExpired, ServerLeft, StreamNames
from events.servers import ExpiringKind
from runtime.handling import RedisCommand

ServerFact = ServerCheckedIn | ServerLeft | ServerExpired

SERVICE_URL: ExpiringKind = "service-url"
EXPIRING_KINDS: tuple[ExpiringKind, ...] = ("fs", "rtp", SERVICE_URL)


def server_set(names: StreamNames, kind: ExpiringKind) -> str:
    """The jambonz set a kind's members live in."""
    if kind == "fs":
        return names.active_fs
    if kind == "rtp":
        return names.active_rtp
    return names.fs_service_url


def fs_member(ip: str, port: int) -> str:
    """A feature server's member: `<ip>:<port>`, as jambonz writes it (no brackets for IPv6)."""
    return f"{ip}:{port}"


def ip_key(text: str) -> str:
    """An IP address in one spelling (`2001:DB8::0:1` and `2001:db8::1` are one key); other text as is."""
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return text


def member_ips(member: str) -> set[str]:
    """The IP keys an `active-fs` member may stand for: itself (a bare IP), and the part before
    its last `:` when the rest is a port. Both, for IPv6 members, where `::1:5060` reads either way."""
    keys = {ip_key(member)}
    host, sep, port = member.rpartition(":")
    if sep and port.isdigit() and host:
        keys.add(ip_key(host))
    return keys


def is_drained(member: str, drained_keys: Iterable[str]) -> bool:
    """Whether an `active-fs` member's IP is in the drained set (given as `ip_key`s)."""
    return not member_ips(member).isdisjoint(drained_keys)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def writes_for(fact: ServerFact, names: StreamNames) -> list[RedisCommand]:
    """The Redis commands that apply one fact to the sets and the last-seen indexes."""
    if isinstance(fact, ServerExpired):
        return _remove(names, fact.kind, fact.member)
    commands: list[RedisCommand] = []
    if isinstance(fact, ServerCheckedIn):
        at = _ms(fact.occurred_at)
        commands += _add(names, fact.kind, fact.member, at)
        if fact.service_url:
            commands += _add(names, SERVICE_URL, fact.service_url, at)
        return commands
    commands += _remove(names, fact.kind, fact.member)
    if fact.service_url:
        commands += _remove(names, SERVICE_URL, fact.service_url)
    return commands


def _add(names: StreamNames, kind: ExpiringKind, member: str, at_ms: int) -> list[RedisCommand]:
    # GT: a late or replayed check-in never moves a last-seen time backwards.
    return [("SADD", server_set(names, kind), member), ("ZADD", names.server_last_seen(kind), "GT", at_ms, member)]


def _remove(names: StreamNames, kind: ExpiringKind, member: str) -> list[RedisCommand]:
    return [("SREM", server_set(names, kind), member), ("ZREM", names.server_last_seen(kind), member)]


class Membership:
    """The server sets as one batch of heartbeats sees them: read once, then changed by each fact
    in order, so every answer of the batch counts the members after its own change."""

    def __init__(self, members: Mapping[ExpiringKind, Iterable[str]] | None = None) -> None:
        self._sets: dict[ExpiringKind, set[str]] = {kind: set() for kind in EXPIRING_KINDS}
        for kind, values in (members or {}).items():
            self._sets[kind].update(values)

    def members(self, kind: ExpiringKind) -> frozenset[str]:
        return frozenset(self._sets[kind])

    def count(self, kind: ExpiringKind) -> int:
        return len(self._sets[kind])

    def count_after(self, fact: ServerFact) -> int:
        """The size of the fact's set once the fact is applied (the set itself is left alone)."""
        members = self._sets[fact.kind]
        present = fact.member in members
        if isinstance(fact, ServerCheckedIn):
            return len(members) + (not present)
        return len(members) - present

    def apply(self, fact: ServerFact) -> None:
        if isinstance(fact, ServerCheckedIn):
            self._sets[fact.kind].add(fact.member)
            if fact.service_url:
                self._sets[SERVICE_URL].add(fact.service_url)
            return
        self._sets[fact.kind].discard(fact.member)
        if isinstance(fact, ServerLeft) and fact.service_url:
            self._sets[SERVICE_URL].discard(fact.service_url)
