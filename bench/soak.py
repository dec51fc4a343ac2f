"""The soak (issue 12): does the service's Redis grow with phones, or with refreshes?

P phones (distinct bench users, each on a UDP socket of its own, bench/phones.py) register once:
REGISTER → 401 → REGISTER with the digest → 200, asking for REGISTER_EXPIRES_S (an hour). Then R
refresh rounds: every phone sends one REGISTER from the same source address and port, which the
service answers 200 from its cached binding (SPEC 2.3: same proxy, binding more than 30 s from
expiring), without the webhook. Every `change_every`-th refresh round, `change_percent` % of the
phones (another slice each time) first move to a new source port, so their refresh misses the cache
and is a full registration again: a NAT rebinding, a reboot.

Before the first registration and after every round, once the service has caught up (no consumer
group of the run with anything pending or undelivered, then the service's CPU idle), the run's Redis
memory is measured (bench/footprint.py). Bytes per phone are the growth over that first measurement
divided by P; bytes retained per refresh are the growth from the registration round to the last round
divided by the refreshes sent in between (moved phones included). The last line uses the per-key
sum; `used_memory` is beside it in the JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.footprint import Footprint, RedisFootprint, stream_growth
from bench.ladder import settle
from bench.phones import Fleet, Phone, RoundTally
from bench.sidecar import RunningService

ARCHIVE_TABLE = "sidecar_history_archive"
DRAIN_TIMEOUT_S = 120.0
# The targets on the default soak (recorded with the numbers; missing them does not fail the run).
TARGET_BYTES_PER_PHONE = 3000
TARGET_GROWTH_FRACTION = 0.10
TARGET_BYTES_PER_REFRESH = 20.0


@dataclass(frozen=True)
class SoakPlan:
    phones: int = 5000
    rounds: int = 20
    rate_per_s: int = 1000  # SIP transactions per second (a full registration is two)
    change_every: int = 5
    change_percent: float = 5.0

    def movers(self, refresh_round: int) -> range:
        """Indexes of the phones that move to a new source port before `refresh_round` (1-based):
        none, or the next slice of change_percent % of them."""
        if not self.change_every or refresh_round % self.change_every:
            return range(0)
        count = min(self.phones, max(1, round(self.phones * self.change_percent / 100)))
        start = (refresh_round // self.change_every - 1) * count % self.phones
        return range(start, start + count)

    def as_dict(self) -> dict[str, object]:
        return {
            "phones": self.phones,
            "rounds": self.rounds,
            "rate_per_s": self.rate_per_s,
            "change_every": self.change_every,
            "change_percent": self.change_percent,
        }


@dataclass
class SoakRound:
    """One round: what the phones did (`moved`: the phones that registered again from a new port),
    how the service caught up, and the memory measured after it."""

    name: str  # "register" or "refresh N"
    phones: RoundTally
    moved: RoundTally | None
    drain: dict[str, object]
    footprint: Footprint
    archive_rows: int | None

    @property
    def requests(self) -> int:
        """REGISTERs the round's phones sent (one per phone, moved ones included)."""
        return self.phones.phones + (self.moved.phones if self.moved is not None else 0)

    @property
    def failed(self) -> int:
        tallies = [self.phones] + ([self.moved] if self.moved is not None else [])
        return sum(sum(tally.failures.values()) for tally in tallies)


@dataclass
class Soak:
    """The soak against one running service, measuring with `footprint`."""

    service: RunningService
    fleet: Fleet
    footprint: RedisFootprint
    count_archive_rows: Callable[[], Awaitable[int | None]]
    plan: SoakPlan
    baseline: Footprint | None = None
    archive_rows_before: int | None = None
    rounds: list[SoakRound] = field(default_factory=list)

    async def run(self, report: Callable[[SoakRound], None]) -> None:
        _, self.baseline = await self._caught_up()
        self.archive_rows_before = await self.count_archive_rows()
        phones = self.fleet.phones
        tally = await self.fleet.round(phones, self.plan.rate_per_s, transactions_each=2)
        report(await self._measured("register", tally, None))
        for number in range(1, self.plan.rounds + 1):
            movers = [phones[index % len(phones)] for index in self.plan.movers(number)]
            staying = _without(phones, movers)
            tally = await self.fleet.round(staying, self.plan.rate_per_s, transactions_each=1)
            moved = None
            if movers:
                await self.fleet.move(movers)
                moved = await self.fleet.round(movers, self.plan.rate_per_s, transactions_each=2)
            report(await self._measured(f"refresh {number}", tally, moved))

    async def _caught_up(self) -> tuple[dict[str, object], Footprint]:
        dead = self.service.dead()
        if dead:
            raise RuntimeError(f"{dead[0].name} exited with {dead[0].process.returncode}:\n{dead[0].log_tail()}")
        drain = await self.footprint.drain(DRAIN_TIMEOUT_S)
        await settle(self.service)
        return drain, await self.footprint.measure()

    async def _measured(self, name: str, tally: RoundTally, moved: RoundTally | None) -> SoakRound:
        drain, footprint = await self._caught_up()
        measured = SoakRound(name, tally, moved, drain, footprint, await self.count_archive_rows())
        self.rounds.append(measured)
        return measured

    def per_phone(self, footprint: Footprint) -> dict[str, float]:
        """Growth over the baseline per phone, both ways."""
        assert self.baseline is not None
        return {
            "keys_bytes": round((footprint.keys_bytes - self.baseline.keys_bytes) / self.plan.phones, 1),
            "used_memory": round((footprint.used_memory - self.baseline.used_memory) / self.plan.phones, 1),
        }

    def per_phone_by_part(self, footprint: Footprint) -> dict[str, float]:
        """Growth of each part of the per-key sum over the baseline, per phone."""
        assert self.baseline is not None
        before, after = self.baseline.parts(), footprint.parts()
        return {part: round((after[part] - before.get(part, 0)) / self.plan.phones, 1) for part in after}

    def summary(self) -> dict[str, object]:
        """The numbers of the last line and what they rest on."""
        assert self.baseline is not None and self.rounds
        first, last = self.rounds[0], self.rounds[-1]
        refreshes = sum(measured.requests for measured in self.rounds[1:])
        after_first, after_last = self.per_phone(first.footprint), self.per_phone(last.footprint)
        retained = {
            way: round((after_last[way] - after_first[way]) * self.plan.phones / refreshes, 1) if refreshes else None
            for way in after_first
        }
        archive = [self.archive_rows_before, first.archive_rows, last.archive_rows]
        growth = after_last["keys_bytes"] / after_first["keys_bytes"] - 1 if after_first["keys_bytes"] else None
        per_refresh = retained["keys_bytes"]
        return {
            "line_uses": "keys_bytes (per-key MEMORY USAGE sum; used_memory is server-wide)",
            "bytes_per_phone_after_register": after_first,
            "bytes_per_phone_after_last_round": after_last,
            "bytes_retained_per_refresh": retained,
            "bytes_per_phone_by_part": {
                "after_register": self.per_phone_by_part(first.footprint),
                "after_last_round": self.per_phone_by_part(last.footprint),
            },
            "refreshes_sent": refreshes,
            "refreshes_cached": sum(measured.phones.cached for measured in self.rounds[1:]),
            "refreshes_challenged": sum(measured.phones.full for measured in self.rounds[1:]),
            "failed": sum(measured.failed for measured in self.rounds),
            "retransmissions": sum(
                measured.phones.retransmissions + (measured.moved.retransmissions if measured.moved else 0)
                for measured in self.rounds
            ),
            "history_entries": {
                "after_register": first.footprint.history.entries,
                "after_last": last.footprint.history.entries,
            },
            "stream_entries": {
                "after_register": stream_growth(self.baseline, first.footprint),
                "after_last": stream_growth(self.baseline, last.footprint),
            },
            "archive_table": archive[0] is not None,
            "archive_rows_written": {
                "after_register": (archive[1] or 0) - (archive[0] or 0),
                "after_last": (archive[2] or 0) - (archive[0] or 0),
            },
            "targets": {
                "bytes_per_phone": TARGET_BYTES_PER_PHONE,
                "growth_fraction": TARGET_GROWTH_FRACTION,
                "bytes_per_refresh": TARGET_BYTES_PER_REFRESH,
            },
            "growth_fraction": None if growth is None else round(growth, 3),
            "targets_met": {
                "bytes_per_phone": after_last["keys_bytes"] <= TARGET_BYTES_PER_PHONE,
                "growth_fraction": growth is not None and growth <= TARGET_GROWTH_FRACTION,
                "bytes_per_refresh": per_refresh is not None and per_refresh <= TARGET_BYTES_PER_REFRESH,
            },
        }

    def as_dict(self) -> dict[str, object]:
        assert self.baseline is not None
        return {
            "baseline": self.baseline.as_dict(),
            "archive_rows_before": self.archive_rows_before,
            "rounds": [
                {
                    "round": measured.name,
                    "phones": measured.phones.as_dict(),
                    "moved": measured.moved.as_dict() if measured.moved is not None else None,
                    "drain": measured.drain,
                    "bytes_per_phone": self.per_phone(measured.footprint),
                    "archive_rows": measured.archive_rows,
                    "footprint": measured.footprint.as_dict(),
                }
                for measured in self.rounds
            ],
        }


def _without(phones: list[Phone], movers: list[Phone]) -> list[Phone]:
    moving = {id(phone) for phone in movers}
    return [phone for phone in phones if id(phone) not in moving]


def soak_line(plan: SoakPlan, summary: dict[str, object]) -> str:
    """`soak: P phones, R rounds: redis X bytes/phone (round 1: Y), Z bytes retained per refresh`."""
    last, first, retained = (
        summary[name]
        for name in ("bytes_per_phone_after_last_round", "bytes_per_phone_after_register", "bytes_retained_per_refresh")
    )
    assert isinstance(last, dict) and isinstance(first, dict) and isinstance(retained, dict)
    per_refresh = retained["keys_bytes"]
    per_refresh_text = "n/a" if per_refresh is None else f"{per_refresh:.1f}"
    return (
        f"soak: {plan.phones} phones, {plan.rounds} rounds: redis {last['keys_bytes']:.0f} bytes/phone "
        f"(round 1: {first['keys_bytes']:.0f}), {per_refresh_text} bytes retained per refresh"
    )


def round_line(soak: Soak, measured: SoakRound) -> str:
    tally = measured.phones
    latency = tally.as_dict()["latency"]
    assert isinstance(latency, dict)
    text = (
        f"[bench] soak {measured.name:10}  {tally.phones} phones: cached {tally.cached} full {tally.full} "
        f"failed {sum(tally.failures.values())} retransmissions={tally.retransmissions} "
        f"({tally.transactions / tally.elapsed_s if tally.elapsed_s else 0:.0f} tx/s, p50 {latency['p50_ms']} "
        f"p99 {latency['p99_ms']} ms)"
    )
    if measured.moved is not None:
        moved = measured.moved
        text += f"  moved {moved.phones}: full {moved.full} cached {moved.cached} failed {sum(moved.failures.values())}"
    per_phone = soak.per_phone(measured.footprint)
    footprint = measured.footprint
    streams = " ".join(f"{name.rsplit(':', 1)[-1]}={entries}" for name, entries in footprint.stream_entries.items())
    return (
        f"{text}  caught up in {measured.drain['waited_s']} s"
        f"{'' if measured.drain['drained'] else ' (NOT drained: ' + str(measured.drain['left']) + ')'}"
        f"  redis {per_phone['keys_bytes']:.0f} bytes/phone (used_memory {per_phone['used_memory']:.0f})"
        f"  history entries {footprint.history.entries}  stream entries {streams}"
        f"  archive rows {measured.archive_rows}"
    )
