"""Processors: the decisions. Each is a pure decide() beside a thin I/O shell run by the consumer loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.services import Services, Worker


def build(services: Services) -> list[Worker]:
    """The processors role: the registrar on `requests` (many requests in flight), the heartbeat on
    `heartbeats` (its own consumer: a heartbeat never waits behind a registration), and the sweepers."""
    from events.streams import GROUP_HEARTBEAT, GROUP_PROCESSORS
    from processors.answer_timing import TimedRegistrar
    from processors.expiry import ExpirySweeper
    from processors.heartbeat import Heartbeat, ServerExpiry
    from processors.registrar import Registrar, RegistrarConfig
    from projections.registrations import RegistrationsProjection
    from projections.snapshot import SnapshotTaker
    from runtime.consumer import ConcurrentConsumer, Consumer
    from runtime.workqueues import WorkQueueTrimmer

    assert services.mysql is not None and services.webhooks is not None, "processors need MySQL and HTTP"
    settings = services.settings
    registrar = Registrar(
        RegistrarConfig.from_settings(settings),
        services.redis,
        services.mysql,
        services.webhooks,
        services.clock,
        mget=services.eventlog.read_keys,
    )
    heartbeat = Heartbeat(services.redis, services.names, services.clock)
    timed = TimedRegistrar(registrar, services.metrics)
    partitions = services.partitions
    workers: list[Worker] = [
        Consumer(services.eventlog, services.names.heartbeats, GROUP_HEARTBEAT, heartbeat),
        ServerExpiry(
            services.redis,
            services.eventlog,
            expires_interval_ms=settings.expires_interval_ms,
            check_interval_ms=settings.check_expires_interval_ms,
            clock=services.clock,
        ),
        WorkQueueTrimmer(
            services.redis,
            {stream: groups for names in partitions for stream, groups in names.work_queues.items()},
            grace_s=settings.eventlog.workqueue_grace_s,
            grace_max=settings.eventlog.workqueue_grace_max,
            bounds={stream: key for names in partitions for stream, key in names.trim_bounds.items()},
            clock=services.clock,
        ),
    ]
    # Per partition (SIDECAR_PARTITIONS): a consumer of its requests (one registrar decides them all: one webhook
    # gate and account cache per process), the inline records of its facts, its expiry sweep and its snapshot.
    for names in partitions:
        # The registrar's grants and removals write `user:<aor>` and `active-user` in the commit of the decision.
        records = RegistrationsProjection(names, services.clock, apart=services.eventlog.cluster)
        services.eventlog.project_inline(names.registrations, records.inline)
        sweeper = ExpirySweeper(
            services.redis, names, settings.eventlog.retention_s, clock=services.clock, apart=services.eventlog.cluster
        )
        snapshots = SnapshotTaker(
            services.redis, names, interval_s=settings.eventlog.snapshot_interval_s, clock=services.clock
        )
        if names.partition:
            sweeper.name, snapshots.name = f"{sweeper.name}-p{names.partition}", f"{snapshots.name}-p{names.partition}"
        consumer = ConcurrentConsumer(
            services.eventlog,
            names.requests,
            GROUP_PROCESSORS,
            timed,
            max_in_flight=-(-settings.max_in_flight // len(partitions)),  # the bound shared by the partitions
            names=names,
        )
        workers += [consumer, sweeper, snapshots]
    return [
        *workers,
        *_regbot(services),
        *_pinger(services),
    ]


def _regbot(services: Services) -> list[Worker]:
    """Outbound registration: the leader loop, the answers handler and the carriers projection (it writes MySQL)."""
    from events.streams import GROUP_CARRIERS_PROJECTION, GROUP_REGBOT
    from processors.regbot import Regbot, RegbotAnswers, policy_of
    from projections.carriers import CarriersProjection
    from runtime.consumer import Consumer

    assert services.mysql is not None
    settings, names = services.settings, services.names
    answers = RegbotAnswers(services.redis, names, policy_of(settings), services.clock)
    projection = CarriersProjection(services.mysql, services.time_series)
    return [
        Regbot(settings, services.redis, services.mysql, services.eventlog, services.clock),
        Consumer(services.eventlog, names.carriers, GROUP_REGBOT, answers),
        Consumer(services.eventlog, names.carriers, GROUP_CARRIERS_PROJECTION, projection),
    ]


def _pinger(services: Services) -> list[Worker]:
    """Gateway OPTIONS pings: the round loop, the answers handler and the blacklist projection (it writes MySQL)."""
    from events.pinger import GROUP_GATEWAY_BLACKLIST_PROJECTION, GROUP_PINGER
    from processors.pinger import PingAnswers, Pinger, ping_policy_of
    from projections.gateway_blacklist import GatewayBlacklistProjection
    from runtime.consumer import Consumer

    assert services.mysql is not None
    settings, names = services.settings, services.names
    answers = PingAnswers(services.redis, names, ping_policy_of(settings))
    projection = GatewayBlacklistProjection(services.mysql, services.time_series)
    return [
        Pinger(settings, services.mysql, services.eventlog, services.clock),
        Consumer(services.eventlog, names.carriers, GROUP_PINGER, answers),
        Consumer(services.eventlog, names.carriers, GROUP_GATEWAY_BLACKLIST_PROJECTION, projection),
    ]
