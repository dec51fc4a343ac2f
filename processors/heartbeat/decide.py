"""The heartbeat decision (SPEC 3): one OPTIONS from a feature or RTP server → a fact and the answer.

Pure: the shell hands in the sets as the batch sees them, the drained IPs and the time; nothing
here reads a clock or a store (only new event ids are random).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import TypedDict

from events import OptionsReceived, ReplyIssued, ServerCheckedIn, ServerLeft
from events.envelope import new_event_id
from events.servers import ServerKind
from projections.servers import Membership, fs_member, ip_key

OPEN = "open"
CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Decision:
    """What one heartbeat produced: the fact (None for a plain OPTIONS) and the SIP answer."""

    fact: ServerCheckedIn | ServerLeft | None
    reply: ReplyIssued


def server_kind(options: OptionsReceived) -> ServerKind | None:
    """`rtp` when X-RTP-Status is present (even beside X-FS-Status), `fs` for X-FS-Status alone."""
    if options.rtp_status is not None:
        return "rtp"
    if options.fs_status is not None:
        return "fs"
    return None


def is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def decide(
    options: OptionsReceived,
    *,
    cause_id: str,
    membership: Membership,
    drained_ips: Collection[str],
    now: datetime,
) -> Decision:
    """Decides one heartbeat.

    `cause_id` is the request's stream entry id, `drained_ips` the `<cluster>:drained-fs`
    members as `ip_key`s, `now` the time the fact is stamped with (its last-seen time).
    """
    kind = server_kind(options)
    if kind is None:  # a plain OPTIONS: 200 with no X-Members
        return Decision(None, _reply(options, cause_id, now, 200, "OK", []))
    status = options.rtp_status if kind == "rtp" else options.fs_status
    assert status is not None
    member = options.source_ip if kind == "rtp" else fs_member(options.source_ip, options.source_port)
    drained = (
        kind == "fs"
        and status == OPEN
        and is_ip_address(options.source_ip)
        and ip_key(options.source_ip) in drained_ips
    )
    envelope = _envelope(options, cause_id, now)
    fact: ServerCheckedIn | ServerLeft
    if status == OPEN and not drained:
        fact = ServerCheckedIn(
            **envelope,
            kind=kind,
            member=member,
            ip=options.source_ip,
            port=options.source_port,
            service_url=options.fs_service_url or None,
        )
    else:
        fact = ServerLeft(
            **envelope,
            kind=kind,
            member=member,
            ip=options.source_ip,
            port=options.source_port,
            service_url=options.fs_service_url or None,
            status=CLOSED if drained else status,
            drained=drained,
        )
    members = membership.count_after(fact)
    return Decision(fact, _reply(options, cause_id, now, 200, "OK", [("X-Members", str(members))]))


def failed(options: OptionsReceived, *, cause_id: str, now: datetime) -> ReplyIssued:
    """The answer when the sets could not be read: 503 (SPEC 3, "on any exception")."""
    return _reply(options, cause_id, now, 503, "Service Unavailable", [])


class _Envelope(TypedDict):
    event_id: str
    occurred_at: datetime
    correlation_id: str
    causation_id: str | None


def _envelope(options: OptionsReceived, cause_id: str, now: datetime) -> _Envelope:
    """The request's story goes on: same correlation id, caused by the request's entry."""
    return _Envelope(
        event_id=new_event_id(), occurred_at=now, correlation_id=options.correlation_id, causation_id=cause_id
    )


def _reply(
    options: OptionsReceived, cause_id: str, now: datetime, status: int, reason: str, headers: list[tuple[str, str]]
) -> ReplyIssued:
    return ReplyIssued(**_envelope(options, cause_id, now), status=status, reason=reason, headers=headers)
