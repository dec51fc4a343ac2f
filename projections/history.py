"""The history projection: the story of each AOR (requests, decisions, expiries), for `sbc-sidecar history`.

Each event about an AOR becomes one summary in a per-AOR sorted set scored by time. ZADD of the
same summary is a no-op, so replays and re-deliveries are harmless; entries older than the
retention window are dropped as new ones arrive, and the key expires with the window.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import msgspec

from events import (
    Event,
    RegisterChallenged,
    RegisterReceived,
    RegisterRejected,
    RegistrationExpired,
    RegistrationGranted,
    RegistrationRefreshed,
    RegistrationRemoved,
    RequestExpired,
    StreamNames,
)
from runtime.handling import Delivery, Outcome, RedisCommand
from runtime.redis_scripts import Script

_json = msgspec.json.Encoder()

# One step in, steps older than the window out, the key kept alive as long as the window:
# one command per event instead of three.
RECORD_SCRIPT = Script(
    "history-record",
    """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
""",
)


def _source(event: Event) -> str | None:
    ip, port = getattr(event, "source_ip", None), getattr(event, "source_port", None)
    return f"{ip}:{port}" if ip else None


def aor_of(event: Event) -> str | None:
    """The AOR a step belongs to: a request's To-URI, or the AOR its decision named (the same string)."""
    aor: str | None = getattr(event, "aor", None)
    return aor


def summarize(entry_id: str, event: Event) -> dict[str, object] | None:
    """What the history keeps of one event; None for events that are not about an AOR."""
    step: dict[str, object] = {
        "id": entry_id,
        "at": event.occurred_at.isoformat(),
        "type": event.TYPE,
        "correlation_id": event.correlation_id,
    }
    source = _source(event)
    if source:
        step["source"] = source
    if isinstance(event, RegisterReceived):
        step.update(
            transport=event.transport,
            expires=event.expires,
            call_id=event.call_id,
            credentials=event.authorization is not None,
        )
        if event.authorization is not None and event.authorization.username:
            step["username"] = event.authorization.username
        if event.user_agent:
            step["user_agent"] = event.user_agent
    elif isinstance(event, RegisterChallenged):
        step.update(status=401, reason="Unauthorized", stale=event.stale)
    elif isinstance(event, RegisterRejected):
        step.update(status=event.status, reason=event.reason, cause=event.cause)
        if event.x_reason:
            step["x_reason"] = event.x_reason
    elif isinstance(event, RegistrationGranted):
        step.update(
            status=200,
            expires=event.granted_expires_s,
            advertised_expires=event.advertised_expires_s,
            contact=event.contact,
            protocol=event.protocol,
        )
    elif isinstance(event, RegistrationRefreshed):
        step.update(status=200, expires=event.advertised_expires_s, cached=True)
    elif isinstance(event, RegistrationRemoved):
        step.update(status=200, expires=0)
    elif isinstance(event, RegistrationExpired):
        step.update(expiry_time_ms=event.expiry_time_ms)
    elif isinstance(event, RequestExpired):
        step.update(late_ms=event.late_ms, call_id=event.call_id)
    else:
        return None
    return step


class HistoryProjection:
    def __init__(self, names: StreamNames, retention_s: int) -> None:
        self.names = names
        self.retention_s = retention_s

    def commands_for(self, entry_id: str, event: Event) -> list[RedisCommand]:
        aor = aor_of(event)
        step = summarize(entry_id, event) if aor else None
        if aor is None or step is None:
            return []
        key = self.names.history(aor)
        at_ms = int(event.occurred_at.timestamp() * 1000)
        oldest_ms = at_ms - self.retention_s * 1000
        return [RECORD_SCRIPT.command((key,), (at_ms, _json.encode(step).decode(), oldest_ms, self.retention_s))]

    async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return [Outcome(writes=self.commands_for(d.entry_id, d.event)) for d in deliveries]


def describe_step(step: dict[str, object]) -> str:
    """One human line for one step of the story."""
    at = datetime.fromisoformat(str(step["at"])).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    kind = step["type"]
    source = step.get("source", "")
    if kind == "RegisterReceived":
        creds = f"with credentials of {step.get('username')}" if step.get("credentials") else "without credentials"
        text = f"REGISTER from {source} over {step.get('transport')}, expires={step.get('expires')}, {creds}"
    elif kind == "RegisterChallenged":
        text = "401 Unauthorized: challenged" + (" (stale nonce)" if step.get("stale") else "")
    elif kind == "RegisterRejected":
        text = f"{step.get('status')} {step.get('reason')}: {step.get('cause')}"
    elif kind == "RegistrationGranted":
        text = (
            f"200 OK: registered for {step.get('expires')} s (advertised {step.get('advertised_expires')} s), "
            f"contact {step.get('contact')}"
        )
    elif kind == "RegistrationRefreshed":
        text = f"200 OK: refreshed from the cached binding (expires {step.get('expires')} s, not re-authenticated)"
    elif kind == "RegistrationRemoved":
        text = "200 OK: unregistered"
    elif kind == "RegistrationExpired":
        text = "binding expired without refresh"
    elif kind == "RequestExpired":
        text = f"expired before it was decided: nobody waited for the answer (read {step.get('late_ms')} ms late)"
    else:
        text = str(kind)
    return f"{at}  {text}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _moment(step: dict[str, object]) -> tuple[int, int, str]:
    at = datetime.fromisoformat(str(step["at"]))
    is_decision = 0 if step["type"] == "RegisterReceived" else 1
    return (at - _EPOCH) // timedelta(milliseconds=1), is_decision, str(step["at"])


def in_story_order(steps: list[dict[str, object]]) -> list[dict[str, object]]:
    """Oldest first, every decision right after the request it answers.

    Ingest stamps a request to the microsecond, the registrar its decisions to the whole millisecond
    (`now_ms`), so a 401 can carry an earlier time than its request, and the phone's next REGISTER can
    arrive within the millisecond of that 401. Steps are therefore kept together by correlation id (a
    request and its decisions share one), each transaction placed by its first moment (millisecond,
    requests before decisions, exact time), and within one the request comes first.
    """
    starts: dict[object, tuple[int, int, str]] = {}
    for step in steps:
        moment = _moment(step)
        key = step.get("correlation_id") or step["id"]
        starts[key] = min(starts.get(key, moment), moment)

    def order(step: dict[str, object]) -> tuple[tuple[int, int, str], int, tuple[int, int, str], str]:
        moment = _moment(step)
        return starts[step.get("correlation_id") or step["id"]], moment[1], moment, str(step["id"])

    return sorted(steps, key=order)


async def load_history(redis: object, names: StreamNames, aor: str) -> list[dict[str, object]]:
    raw = await redis.zrange(names.history(aor), 0, -1)  # type: ignore[attr-defined]
    return in_story_order([json.loads(item) for item in raw])
