"""The heartbeat shell: reads the server sets once per batch, decides each OPTIONS in order, and
hands back the fact, the set writes and the SIP answer to be committed together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from redis.asyncio import Redis

from events import OptionsReceived, ServerCheckedIn, StreamNames
from processors.heartbeat.decide import decide, failed, server_kind
from projections.servers import SERVICE_URL, Membership, ip_key, writes_for
from runtime.faults import REDIS_FAULTS
from runtime.handling import Delivery, Outcome
from runtime.services import Clock

log = logging.getLogger(__name__)

_FAULTS: tuple[type[BaseException], ...] = (*REDIS_FAULTS, TimeoutError)

READ_TIMEOUT_S = 5.0


class Heartbeat:
    """BatchHandler for the `requests` stream, group `heartbeat`.

    Entries other than OptionsReceived (RegisterReceived, ...) are acknowledged with no output.
    The batch's sets are read in one round trip; each heartbeat is then decided against them and
    its fact applied in memory, so that `X-Members` counts the set after this heartbeat even
    though the set writes only land in the commit (SPEC 3; see `projections.servers`).
    """

    def __init__(self, redis: Redis, names: StreamNames, clock: Clock) -> None:
        self.redis = redis
        self.names = names
        self.clock = clock

    async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome | BaseException]:
        if not any(isinstance(d.event, OptionsReceived) for d in deliveries):
            return [Outcome() for _ in deliveries]  # the usual batch: registrations only
        now = datetime.fromtimestamp(self.clock(), UTC)
        membership, drained = Membership(), frozenset[str]()
        if any(isinstance(d.event, OptionsReceived) and server_kind(d.event) for d in deliveries):
            try:
                membership, drained = await self._read()
            except _FAULTS as exc:
                log.warning("heartbeat sets unreadable, answering 503 error=%s", exc)
                return [self._failed(d, now) for d in deliveries]
        return [self._decide(d, membership, drained, now) for d in deliveries]

    async def _read(self) -> tuple[Membership, frozenset[str]]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.smembers(self.names.active_fs)
        pipe.smembers(self.names.active_rtp)
        pipe.smembers(self.names.fs_service_url)
        pipe.smembers(self.names.drained_fs)
        async with asyncio.timeout(READ_TIMEOUT_S):
            fs, rtp, urls, drained = await pipe.execute()
        membership = Membership({"fs": _texts(fs), "rtp": _texts(rtp), SERVICE_URL: _texts(urls)})
        return membership, frozenset(ip_key(ip) for ip in _texts(drained))

    def _decide(self, delivery: Delivery, membership: Membership, drained: frozenset[str], now: datetime) -> Outcome:
        options = delivery.event
        if not isinstance(options, OptionsReceived):
            return Outcome()
        decision = decide(options, cause_id=delivery.entry_id, membership=membership, drained_ips=drained, now=now)
        outcome = Outcome(appends=[(self.names.replies(options.reply_to), decision.reply)])
        fact = decision.fact
        if fact is None:
            return outcome
        previous = membership.count(fact.kind)
        membership.apply(fact)
        outcome.appends.insert(0, (self.names.servers, fact))
        outcome.writes.extend(writes_for(fact, self.names))
        if membership.count(fact.kind) != previous:
            if isinstance(fact, ServerCheckedIn):
                log.info(
                    "server checked in kind=%s member=%s members=%d",
                    fact.kind,
                    fact.member,
                    membership.count(fact.kind),
                )
            else:
                log.info(
                    "server left kind=%s member=%s status=%s drained=%s members=%d",
                    fact.kind,
                    fact.member,
                    fact.status,
                    fact.drained,
                    membership.count(fact.kind),
                )
        return outcome

    def _failed(self, delivery: Delivery, now: datetime) -> Outcome:
        options = delivery.event
        if not isinstance(options, OptionsReceived):
            return Outcome()
        if server_kind(options) is None:  # a plain OPTIONS needs no set
            return self._decide(delivery, Membership(), frozenset(), now)
        reply = failed(options, cause_id=delivery.entry_id, now=now)
        return Outcome(appends=[(self.names.replies(options.reply_to), reply)])


def _texts(values: set[bytes] | set[str]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in values]
