"""The history's runs against the real Redis: refreshes that change nothing extend one run (first at, last at,
count); every change is its own step, in order, with the request it answered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from events import (
    Event,
    RegisterChallenged,
    RegisterRejected,
    RegistrationGranted,
    RegistrationRefreshed,
    RequestSummary,
    StreamNames,
    new_event_id,
)
from projections.history import HistoryProjection, describe_step, load_history
from runtime.redis_scripts import scripts_used

AOR = "phone@example.com"
T0 = datetime(2026, 12, 6, 9, 15, 0, tzinfo=UTC)


def envelope(seconds: float) -> dict[str, object]:
    event_id = new_event_id()
    return {"event_id": event_id, "occurred_at": T0 + timedelta(seconds=seconds), "correlation_id": event_id}


def summary(seconds: float, credentials: bool = False) -> RequestSummary:
    at = (T0 + timedelta(seconds=seconds - 0.002)).isoformat()
    return RequestSummary(
        at=at, transport="udp", expires=3600, credentials=credentials, username="phone" if credentials else None
    )


def challenge(seconds: float, port: int) -> RegisterChallenged:
    return RegisterChallenged(
        **envelope(seconds),
        aor=AOR,
        realm="example.com",
        nonce="n",
        source_ip="10.0.0.7",
        source_port=port,
        call_id="c",
        request=summary(seconds),
    )


def grant(seconds: float, port: int) -> RegistrationGranted:
    return RegistrationGranted(
        **envelope(seconds),
        aor=AOR,
        contact=f"sip:phone@10.0.0.7:{port}",
        sbc_address="udp/192.0.2.1:5060",
        protocol="udp",
        proxy=f"sip:10.0.0.7:{port}",
        granted_expires_s=3600,
        advertised_expires_s=30,
        expiry_time_ms=0,
        source_ip="10.0.0.7",
        source_port=port,
        call_id="c",
        request=summary(seconds, True),
    )


def refresh(seconds: float, port: int) -> RegistrationRefreshed:
    return RegistrationRefreshed(
        **envelope(seconds),
        aor=AOR,
        advertised_expires_s=30,
        expiry_time_ms=0,
        source_ip="10.0.0.7",
        source_port=port,
        call_id="c",
        contact=f"sip:phone@10.0.0.7:{port}",
        request=summary(seconds),
    )


async def project(redis: Redis, projection: HistoryProjection, events: list[Event]) -> None:
    for n, event in enumerate(events):
        for command in projection.commands_for(f"{1_800_000_000_000 + n}-0", event):
            for script in scripts_used([command]):
                await redis.execute_command("SCRIPT", "LOAD", script.source)
            await redis.execute_command(*command)


async def test_a_phone_that_changed_source_twice_tells_each_change_and_runs_of_refreshes(
    redis: Redis, names: StreamNames
) -> None:
    projection = HistoryProjection(names, retention_s=7 * 86400)
    events: list[Event] = [challenge(0, 5060), grant(0.1, 5060)]
    events += [refresh(30 * n, 5060) for n in range(1, 11)]  # 10 refreshes from the bound source
    events += [challenge(400, 6000), grant(400.1, 6000)]  # the phone moved (NAT rebinding): a change
    events += [refresh(400 + 30 * n, 6000) for n in range(1, 6)]
    events += [challenge(700, 7000), grant(700.1, 7000), refresh(730, 7000)]
    try:
        await project(redis, projection, events)
        steps = await load_history(redis, names, AOR)
        kinds = [s["type"] if s["type"] != "Run" else f"Run x{s['count']}" for s in steps]
        assert kinds == [
            "RegisterReceived", "RegisterChallenged", "RegisterReceived", "RegistrationGranted", "Run x10",
            "RegisterReceived", "RegisterChallenged", "RegisterReceived", "RegistrationGranted", "Run x5",
            "RegisterReceived", "RegisterChallenged", "RegisterReceived", "RegistrationGranted", "Run x1",
        ]  # fmt: skip
        lines = [describe_step(s) for s in steps]
        assert lines[4].endswith(
            "200 OK: refreshed from the cached binding 10 times from 09:15:30 to 09:20:00 (every ~30 s), "
            "same contact and source (expires 30 s, not re-authenticated)"
        )
        assert "REGISTER from 10.0.0.7:6000 over udp, expires=3600, without credentials" in lines[5]
        assert lines[-1].endswith("200 OK: refreshed from the cached binding (expires 30 s, not re-authenticated)")
        assert await redis.llen(names.history(AOR)) == 9  # what Redis holds: a member per decision and per run
    finally:
        await redis.delete(names.history(AOR))


def test_a_rejection_before_any_account_is_no_step_of_a_story(names: StreamNames) -> None:
    """Junk (an unknown realm, a malformed REGISTER) is counted, not told: made-up AORs get no history."""
    projection = HistoryProjection(names, retention_s=7 * 86400)
    fields = {
        "aor": AOR, "status": 403, "reason": "Forbidden", "source_ip": "10.0.0.7", "source_port": 5060,
        "call_id": "c", "request": summary(0),
    }  # fmt: skip
    junk = RegisterRejected(**envelope(0), cause="unknown realm", **fields)  # type: ignore[arg-type]
    refused = RegisterRejected(**envelope(0), cause="digest response does not match", account_sid="acc", **fields)  # type: ignore[arg-type]
    assert projection.commands_for("1-0", junk) == []
    assert len(projection.commands_for("1-1", refused)) == 1
