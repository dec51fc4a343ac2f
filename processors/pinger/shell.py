"""The pinger's I/O: the round loop (gateways from MySQL → ping commands) and the answers handler.

Every process runs one `Pinger` (processors role): every SEND_OPTIONS_PING_INTERVAL seconds, the first one
interval after start, it reads the gateways to ping (SPEC 4.6's filters) and appends one
`GatewayPingRequested` per gateway on `commands`, addressed to its own process's edge. One loop per process:
a lost and regained connection does not start a second one (the original's duplicated timers).

`PingAnswers` (group `pinger` on `carriers`, any process) turns each edge's `GatewayPingAnswered` into facts
with `decide.decide_answer`, given the blacklist key and the other SBCs' latest answers, and records this SBC's
answer in the same commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import aiomysql
from redis.asyncio import Redis

from events import GatewayPingAnswered, GatewayPingFailed, GatewayPingSucceeded, StreamNames
from events.pinger import gateway_blacklist_key, gateway_pings_key
from processors.pinger.decide import PeerAnswer, PingPolicy, answer_time_ms, decide_answer, plan_pings
from processors.regbot.config import query
from runtime.eventlog import EventLog
from runtime.faults import STORE_FAULTS
from runtime.handling import Delivery, Outcome
from runtime.services import Clock
from runtime.settings import Settings

log = logging.getLogger(__name__)

_FAULTS: tuple[type[BaseException], ...] = (*STORE_FAULTS, OSError, TimeoutError, aiomysql.Error)

GATEWAYS_SQL = (
    "SELECT g.sip_gateway_sid, g.voip_carrier_sid, g.ipv4, g.port, g.protocol, g.use_sips_scheme,"
    " vc.voip_carrier_sid AS carrier_sid, vc.name AS carrier_name, vc.account_sid, vc.service_provider_sid"
    " FROM sip_gateways g LEFT JOIN voip_carriers vc ON vc.voip_carrier_sid = g.voip_carrier_sid"
    " WHERE g.send_options_ping = 1 AND g.outbound = 1 AND g.is_active = 1"
    " ORDER BY g.sip_gateway_sid"
)


def ping_policy_of(settings: Settings) -> PingPolicy:
    return PingPolicy(
        interval_s=settings.send_options_ping_interval_s,
        blacklist_ttl_s=settings.options_ping_ttl_s,
        remove_codes=frozenset(settings.options_response_remove),
    )


class Pinger:
    """The round loop (see the module docstring). A worker of the processors role."""

    name = "pinger"

    def __init__(self, settings: Settings, mysql: aiomysql.Pool, eventlog: EventLog, clock: Clock) -> None:
        self.mysql = mysql
        self.eventlog = eventlog
        self.clock = clock
        self.policy = ping_policy_of(settings)
        self.edge_id = settings.ingest_id
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self.rounds = 0
        self.commands_sent = 0
        self.gateways_reachable = 0  # pinged at the last round and not blacklisted then
        self.gateways_blacklisted = 0

    def metrics(self) -> dict[str, float]:
        return {
            "rounds": self.rounds,
            "pings_requested": self.commands_sent,
            "gateways_reachable": self.gateways_reachable,
            "gateways_blacklisted": self.gateways_blacklisted,
        }

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        self.ready.set()
        loop = asyncio.get_running_loop()
        next_round = loop.time() + self.policy.interval_s
        while True:
            try:
                async with asyncio.timeout(max(0.0, next_round - loop.time())):
                    await self._stop.wait()
                return
            except TimeoutError:
                pass
            next_round += self.policy.interval_s
            if next_round < loop.time():  # a round took longer than the interval: skip, do not catch up
                next_round = loop.time() + self.policy.interval_s
            try:
                await self.ping_round()
            except _FAULTS as exc:
                log.warning("gateway ping round failed, next round retries error=%s", exc)

    async def ping_round(self) -> int:
        rows = await query(self.mysql, GATEWAYS_SQL)
        commands = plan_pings(rows, self.policy, int(self.clock() * 1000), self.edge_id)
        if commands:
            await self.eventlog.append(self.eventlog.names.commands, commands)
            # The gateways' state for /metrics: blacklisted or not, as the answers of the rounds before left them.
            keys = [gateway_blacklist_key(command.gateway.sip_gateway_sid) for command in commands]
            blacklisted = sum(1 for value in await self.eventlog.read_keys(keys) if value is not None)
            self.gateways_blacklisted, self.gateways_reachable = blacklisted, len(keys) - blacklisted
        else:
            self.gateways_blacklisted = self.gateways_reachable = 0
        self.rounds += 1
        self.commands_sent += len(commands)
        log.debug("gateway ping round gateways=%d", len(commands))
        return len(commands)


class PingAnswers:
    """A BatchHandler over `carriers`: the edges' ping answers become facts (see the module docstring)."""

    def __init__(self, redis: Redis, names: StreamNames, policy: PingPolicy) -> None:
        self.redis = redis
        self.names = names
        self.policy = policy

    async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome | BaseException]:
        answers = [d.event for d in deliveries if isinstance(d.event, GatewayPingAnswered)]
        if not answers:
            return [Outcome() for _ in deliveries]
        sids = sorted({a.gateway.sip_gateway_sid for a in answers})
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.exists(gateway_blacklist_key(sid))
                pipe.hgetall(gateway_pings_key(self.names, sid))
            replies = await pipe.execute()
        blacklisted = {sid: bool(replies[2 * i]) for i, sid in enumerate(sids)}
        peers: dict[str, dict[str, PeerAnswer]] = {}
        for i, sid in enumerate(sids):
            decoded = {edge.decode(): PeerAnswer.decode(raw) for edge, raw in replies[2 * i + 1].items()}
            peers[sid] = {edge: answer for edge, answer in decoded.items() if answer is not None}
        results: list[Outcome | BaseException] = []
        for delivery in deliveries:
            event = delivery.event
            if not isinstance(event, GatewayPingAnswered):
                results.append(Outcome())
                continue
            sid = event.gateway.sip_gateway_sid
            facts = decide_answer(
                event,
                blacklisted=blacklisted[sid],
                peers=peers[sid],
                policy=self.policy,
                causation_id=delivery.entry_id,
            )
            mine = PeerAnswer(event.status, answer_time_ms(event))
            peers[sid][event.edge_id] = mine  # a later answer in this batch sees this one
            for fact in facts:
                if isinstance(fact, GatewayPingSucceeded):
                    blacklisted[sid] = False
                elif isinstance(fact, GatewayPingFailed) and fact.blacklisted:
                    blacklisted[sid] = True
                log.log(
                    logging.DEBUG if isinstance(fact, GatewayPingSucceeded) else logging.INFO,
                    "%s gateway=%s target=%s edge=%s status=%d",
                    fact.TYPE,
                    sid,
                    event.gateway.label,
                    event.edge_id,
                    event.status,
                )
            key = gateway_pings_key(self.names, sid)
            results.append(
                Outcome(
                    appends=[(self.names.carriers, fact) for fact in facts],
                    writes=[
                        ("HSET", key, event.edge_id, mine.encode()),
                        ("PEXPIRE", key, 2 * self.policy.fresh_ms),
                    ],
                )
            )
        return results
