"""The regbot's I/O: the leader loop (lock, reconciliation, due REGISTERs as commands) and the answers handler.

Leader loop, every `check_interval_s` (60 s): renew or take the lock (`RegbotLeaderAcquired` / `Lost` on
`carriers`); as leader, read the configuration from MySQL. Every second, as leader: read the gateways' states
(one HGETALL) and, for each gateway whose REGISTER is due (`decide.is_due`), commit its
`OutboundRegisterRequested` on `commands` with its new state, in one MULTI. New regbots start in batches of
JAMBONES_REGBOT_BATCH_SIZE with JAMBONES_REGBOT_BATCH_SLEEP_MS between. Gateways no longer configured are
retired (`CarrierRegistrationStopped`, state deleted).

The answers handler (any processor, leader or not: the state is in Redis) turns each edge's
`OutboundRegisterAnswered` into facts with `decide.decide_answer`, committing the facts and the new state with
the ack.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
from collections import Counter
from collections.abc import Sequence

import aiomysql
from redis.asyncio import Redis

from events import (
    CarrierRegisterFailed,
    CarrierRegistrationStopped,
    Event,
    OutboundRegisterAnswered,
    OutboundRegisterRequested,
    RegbotLeaderAcquired,
    RegbotLeaderLost,
    StreamNames,
    new_event_id,
    stamp,
)
from processors.regbot.config import load_plan
from processors.regbot.decide import (
    STATUSES,
    GatewayState,
    Policy,
    decide_answer,
    decode_state,
    encode_state,
    is_due,
)
from processors.regbot.leader import LeaderLock
from processors.regbot.targets import Target, is_ipv4
from runtime.eventlog import EventLog
from runtime.faults import STORE_FAULTS
from runtime.handling import Delivery, Outcome
from runtime.sealed import Sealer
from runtime.services import Clock
from runtime.settings import Settings

log = logging.getLogger(__name__)

_FAULTS: tuple[type[BaseException], ...] = (*STORE_FAULTS, OSError, TimeoutError, aiomysql.Error)
_RELEASE_FAULTS: tuple[type[BaseException], ...] = (*STORE_FAULTS, OSError)

TICK_S = 1.0


def policy_of(settings: Settings) -> Policy:
    return Policy(
        default_expires_s=settings.regbot_default_expires_s,
        min_expires_s=settings.regbot_min_expires_s,
        failure_retry_interval_s=settings.regbot_failure_retry_interval_s,
        failure_threshold=settings.regbot_failure_threshold,
        remove_codes=frozenset(settings.register_response_remove),
    )


class Regbot:
    """The leader loop (see the module docstring). A worker of the processors role."""

    name = "regbot"

    def __init__(
        self, settings: Settings, redis: Redis, mysql: aiomysql.Pool, eventlog: EventLog, clock: Clock
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.mysql = mysql
        self.eventlog = eventlog
        self.names: StreamNames = eventlog.names
        self.clock = clock
        self.policy = policy_of(settings)
        secret = settings.encryption_secret.reveal()
        self._sealer = Sealer(secret)
        self._hash_key = hashlib.sha256(b"regbot config\x00" + secret.encode()).digest()
        self.instance = settings.ingest_id
        self.lock = LeaderLock(redis, self.names.regbot_token, settings.regbot_lock_ttl_s)
        self.targets: dict[str, Target] | None = None  # None until the first reconciliation as leader
        self._reported: set[tuple[str, str]] = set()  # invalid configurations already reported
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self.commands_sent = 0
        self.statuses: Counter[str] = Counter()  # the leader's gateways by status, at its last pass

    def metrics(self) -> dict[str, float]:
        """The leader counts the gateways it registers by status (`gateways_registered` ...); others count none."""
        held = self.lock.held
        counts = {f"gateways_{status}": float(held and self.statuses.get(status, 0)) for status in STATUSES}
        return {"leader": 1.0 if held else 0.0, "commands_sent": self.commands_sent, **counts}

    def stop(self) -> None:
        self._stop.set()

    async def _sleep(self, seconds: float) -> bool:
        """Waits; True when stopped meanwhile."""
        try:
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        self.ready.set()
        if await self._sleep(random.uniform(0, self.settings.regbot_start_delay_max_s)):
            return
        next_check = 0.0
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            try:
                if loop.time() >= next_check:
                    next_check = loop.time() + self.settings.regbot_check_interval_s
                    await self._check_leadership()
                if self.lock.held and self.targets is not None:
                    await self._send_due()
            except _FAULTS as exc:
                log.warning("regbot pass failed, retrying error=%s", exc)
            if await self._sleep(TICK_S):
                break
        await self._step_down()

    async def _step_down(self) -> None:
        """A clean stop hands the lock over at once (a crash leaves it to lapse after its TTL)."""
        if not self.lock.held:
            return
        try:
            await self.eventlog.append(self.names.carriers, [self._leader_lost("stopped")])
            await self.lock.release()
        except _RELEASE_FAULTS as exc:
            log.warning("regbot lock not released, it lapses after its TTL error=%s", exc)

    def _leader_lost(self, reason: str) -> RegbotLeaderLost:
        return RegbotLeaderLost(**stamp(), instance=self.instance, reason=reason)

    async def _check_leadership(self) -> None:
        was = self.lock.held
        outcome = await self.lock.check()
        if outcome == "acquired":
            # Fixed (SPEC 4.1): a regained lock restarts the regbots, from the states the last leader left.
            self.targets = None
            if not was:
                log.info("regbot leader acquired instance=%s", self.instance)
                acquired = RegbotLeaderAcquired(**stamp(), instance=self.instance, ttl_s=self.lock.ttl_s)
                await self.eventlog.append(self.names.carriers, [acquired])
        elif outcome == "lost":
            log.info("regbot leadership lost instance=%s", self.instance)
            self.targets = None
            await self.eventlog.append(self.names.carriers, [self._leader_lost("taken")])
        if self.lock.held:
            await self._reconcile()

    def config_hash(self, target: Target) -> str:
        return hmac.new(self._hash_key, target.config_key.encode(), hashlib.sha256).hexdigest()[:32]

    async def _reconcile(self) -> None:
        found = await load_plan(
            self.mysql,
            contact_use_ip=self.settings.regbot_contact_use_ip,
            expires_s=self.settings.regbot_default_expires_s,
        )
        self.targets = {t.gateway.sip_gateway_sid: t for t in found.targets}
        invalid: list[Event] = []
        for skipped in found.skipped:
            mark = (skipped.gateway.sip_gateway_sid, skipped.reason)
            if mark in self._reported:
                continue
            self._reported.add(mark)
            log.warning(
                "gateway not registered carrier=%s gateway=%s reason=%s",
                skipped.carrier.voip_carrier_sid,
                skipped.gateway.sip_gateway_sid,
                skipped.reason,
            )
            if skipped.write_status:
                invalid.append(
                    CarrierRegisterFailed(
                        **stamp(),
                        voip_carrier_sid=skipped.carrier.voip_carrier_sid,
                        sip_gateway_sid=skipped.gateway.sip_gateway_sid,
                        carrier_name=skipped.carrier.name,
                        trunk_type=skipped.carrier.trunk_type,
                        status=0,
                        reason=skipped.reason,
                        call_id=skipped.gateway.sip_gateway_sid,
                        cseq=0,
                        retry_at_ms=None,
                        remove_failures=0,
                    )
                )
        if invalid:
            await self.eventlog.append(self.names.carriers, invalid)
        log.debug("regbot reconciled gateways=%d skipped=%d", len(self.targets), len(found.skipped))

    async def _states(self) -> dict[str, GatewayState]:
        raw: dict[bytes, bytes] = await self.redis.hgetall(self.names.regbot_state)  # type: ignore[misc,assignment]
        states = {}
        for field, value in raw.items():
            try:
                states[field.decode()] = decode_state(value)
            except ValueError:
                log.warning("unreadable regbot state dropped gateway=%s", field.decode())
        return states

    async def _send_due(self) -> None:
        assert self.targets is not None
        states = await self._states()
        self.statuses = Counter(states[sid].status for sid in self.targets if sid in states)
        now_ms = int(self.clock() * 1000)
        started = 0
        for sid, target in self.targets.items():
            state = states.get(sid)
            digest = self.config_hash(target)
            if not is_due(state, digest, now_ms, self.policy):
                continue
            is_new = state is None or state.config_hash != digest
            if is_new and started and started % self.settings.regbot_batch_size == 0:
                if await self._sleep(self.settings.regbot_batch_sleep_ms / 1000):
                    return
                now_ms = int(self.clock() * 1000)
            if is_new:
                started += 1
            await self._send(target, state, digest, now_ms)
        retired = [(sid, state) for sid, state in states.items() if sid not in self.targets]
        if retired:
            await self._retire(retired)

    async def _send(self, target: Target, state: GatewayState | None, digest: str, now_ms: int) -> None:
        carrier, gateway = target.carrier, target.gateway
        attempt = new_event_id()
        cseq = (state.cseq if state else 0) + 1
        command = OutboundRegisterRequested(
            **stamp(),
            attempt_id=attempt,
            voip_carrier_sid=carrier.voip_carrier_sid,
            sip_gateway_sid=gateway.sip_gateway_sid,
            carrier_name=carrier.name,
            request_uri=target.request_uri,
            next_hop=target.next_hop,
            from_uri=target.from_uri,
            contact=target.contact,
            call_id=gateway.sip_gateway_sid,  # SPEC 4.3: constant for every REGISTER of the gateway
            cseq=cseq,
            expires_s=self.settings.regbot_default_expires_s,
            user_agent=self.settings.regbot_user_agent,
            username=target.username,
            password_sealed=self._sealer.seal(target.password),
            gateway_host=gateway.ipv4,
            gateway_port=gateway.port,
            transport=target.transport,
            resolve_addresses=carrier.trunk_type == "reg",
            deadline_ms=now_ms + self.policy.attempt_timeout_ms,
            edge_id=self.instance,
        )
        kept = state if state is not None else None
        new_state = GatewayState(
            sip_gateway_sid=gateway.sip_gateway_sid,
            voip_carrier_sid=carrier.voip_carrier_sid,
            carrier_name=carrier.name,
            account_sid=carrier.account_sid,
            service_provider_sid=carrier.service_provider_sid,
            trunk_type=carrier.trunk_type,
            target=target.next_hop,
            config_hash=digest,
            call_id=gateway.sip_gateway_sid,
            status="pending",
            attempt_id=attempt,
            sent_at_ms=now_ms,
            cseq=cseq + 1,  # an authenticated retry may use the next one
            last_status=kept.last_status if kept else None,
            last_reason=kept.last_reason if kept else None,
            last_answer_at_ms=kept.last_answer_at_ms if kept else None,
            expires_s=kept.expires_s if kept else 0,
            expires_at_ms=kept.expires_at_ms if kept else None,
            next_at_ms=kept.next_at_ms if kept else 0,
            remove_failures=kept.remove_failures if kept else 0,  # carried over a reconfiguration (SPEC 4.2)
            addresses=kept.addresses if kept else ((gateway.ipv4,) if is_ipv4(gateway.ipv4) else ()),
        )
        await self.eventlog.commit(
            [
                self.eventlog.xadd_command(self.names.commands, command),
                ("HSET", self.names.regbot_state, gateway.sip_gateway_sid, encode_state(new_state)),
            ]
        )
        self.commands_sent += 1
        log.info(
            "outbound REGISTER requested carrier=%s gateway=%s cseq=%d refresh=%s",
            carrier.voip_carrier_sid,
            gateway.sip_gateway_sid,
            cseq,
            state is not None and state.status == "registered",
        )

    async def _retire(self, retired: Sequence[tuple[str, GatewayState]]) -> None:
        commands: list[Sequence[object]] = []
        for sid, state in retired:
            if state.status != "stopped":
                stopped = CarrierRegistrationStopped(
                    **stamp(),
                    voip_carrier_sid=state.voip_carrier_sid,
                    sip_gateway_sid=sid,
                    carrier_name=state.carrier_name,
                    reason="no longer configured for registration",
                    addresses=state.addresses if state.trunk_type == "reg" else (),
                )
                commands.append(self.eventlog.xadd_command(self.names.carriers, stopped))
            commands.append(("HDEL", self.names.regbot_state, sid))
            log.info("regbot retired carrier=%s gateway=%s", state.voip_carrier_sid, sid)
        await self.eventlog.commit(commands)


class RegbotAnswers:
    """A BatchHandler over `carriers`: the edges' answers become facts and the gateways' next states."""

    def __init__(self, redis: Redis, names: StreamNames, policy: Policy, clock: Clock) -> None:
        self.redis = redis
        self.names = names
        self.policy = policy
        self.clock = clock

    async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome | BaseException]:
        answers = [d for d in deliveries if isinstance(d.event, OutboundRegisterAnswered)]
        if not answers:
            return [Outcome() for _ in deliveries]
        sids = sorted({d.event.sip_gateway_sid for d in answers})  # type: ignore[attr-defined]
        values = await self.redis.hmget(self.names.regbot_state, sids)  # type: ignore[misc]
        states = {sid: decode_state(v) for sid, v in zip(sids, values, strict=True) if v is not None}
        now_ms = int(self.clock() * 1000)
        results: list[Outcome | BaseException] = []
        for delivery in deliveries:
            event = delivery.event
            if not isinstance(event, OutboundRegisterAnswered):
                results.append(Outcome())
                continue
            state = states.get(event.sip_gateway_sid)
            if state is None:  # retired while the REGISTER was out: the answer is ignored (SPEC 4.4)
                results.append(Outcome())
                continue
            new_state, facts = decide_answer(state, event, self.policy, now_ms, delivery.entry_id)
            if not facts:
                results.append(Outcome())
                continue
            states[event.sip_gateway_sid] = new_state
            for fact in facts:
                log.info(
                    "%s carrier=%s gateway=%s status=%s",
                    fact.TYPE,
                    event.voip_carrier_sid,
                    event.sip_gateway_sid,
                    event.status,
                )
            results.append(
                Outcome(
                    appends=[(self.names.carriers, fact) for fact in facts],
                    writes=[("HSET", self.names.regbot_state, event.sip_gateway_sid, encode_state(new_state))],
                )
            )
        return results
