"""The history projection: the story of each AOR (requests, decisions, expiries), for `sbc-sidecar history`.

Each decision about an AOR becomes one member of a per-AOR list, holding its step and the REGISTER it
answered (the decision's fact carries the request's summary; read back as two steps). A decision that
repeats the one before it (a refresh with the same contact, source and grant; the same failure from the same
source) extends a run instead (`RECORD_SCRIPT`). A re-delivered decision is told once (steps are read back by
id); members older than the retention window are dropped as new ones arrive, and the key expires with the
window. The archive (projections/archive.py) moves what is older than the hot window to MySQL.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import msgspec

from events import (
    Event,
    RegisterChallenged,
    RegisterRejected,
    RegistrationExpired,
    RegistrationGranted,
    RegistrationRefreshed,
    RegistrationRemoved,
    RequestExpired,
    RequestSummary,
    StreamNames,
)
from runtime.handling import Delivery, Outcome, RedisCommand
from runtime.redis_scripts import Script

_json = msgspec.json.Encoder()

# The steps of one transaction in, steps older than the window out, the key kept alive as long as the window.
# With a signature (`sig`), a decision that repeats the one just before it (a refresh that changes nothing:
# same contact, source and grant; the same failure again) extends a run of them (first at, last at, count)
# instead of adding steps: the story stays complete while its size grows with changes, not with refreshes.
# The story is a list in the order the decisions were committed, each member JSON with its time in ms (`t`; a
# run's is its last refresh): a list of long members costs Redis about half what a sorted set of them does.
# KEYS: the AOR's history. ARGV: oldest ms kept, retention s, sig ('' for none), run json (a template with
# count 1), the decision's time in ms, then the members.
RECORD_SCRIPT = Script(
    "history-record",
    """
local sig = ARGV[3]
local folded = false
if sig ~= '' then
  local last = redis.call('LINDEX', KEYS[1], -1)
  if last then
    local step = cjson.decode(last)
    if step.sig == sig then
      if step.type == 'Run' then
        step.count = step.count + 1
        step.t = tonumber(ARGV[5])
        redis.call('LSET', KEYS[1], -1, cjson.encode(step))
      else
        redis.call('RPUSH', KEYS[1], ARGV[4])
      end
      folded = true
    end
  end
end
if not folded then
  for i = 6, #ARGV do
    redis.call('RPUSH', KEYS[1], ARGV[i])
  end
end
local oldest = tonumber(ARGV[1])
while true do
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head or tonumber(cjson.decode(head).t) >= oldest then break end
  redis.call('LPOP', KEYS[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return folded and 1 or 0
""",
)


def _source(event: Event) -> str | None:
    ip, port = getattr(event, "source_ip", None), getattr(event, "source_port", None)
    return f"{ip}:{port}" if ip else None


def aor_of(event: Event) -> str | None:
    """The AOR a step belongs to: the AOR the decision named (the To-URI's user@host)."""
    aor: str | None = getattr(event, "aor", None)
    return aor


# What a decision's member keeps of the REGISTER it answered (the rest it shares with the decision).
REQUEST_FIELDS = (
    "at",
    "transport",
    "expires",
    "call_id",
    "credentials",
    "username",
    "user_agent",
    "sbc",
    "sbc_address",
)


def request_step(entry_id: str, event: Event, request: RequestSummary) -> dict[str, object]:
    """The REGISTER a decision answered, as the story tells it (from the summary the decision carries)."""
    step: dict[str, object] = {
        "id": f"{entry_id}.0",
        "at": request.at,
        "type": "RegisterReceived",
        "correlation_id": event.correlation_id,
    }
    source = _source(event)
    if source:
        step["source"] = source
    step.update(
        transport=request.transport,
        expires=request.expires,
        call_id=getattr(event, "call_id", None),
        credentials=request.credentials,
    )
    if request.username:
        step["username"] = request.username
    if request.user_agent:
        step["user_agent"] = request.user_agent
    if request.sbc:
        step.update(sbc=request.sbc, sbc_address=request.sbc_address)
    return step


def summarize(entry_id: str, event: Event) -> dict[str, object] | None:
    """What the history keeps of one fact; None for events that are not about an AOR."""
    step: dict[str, object] = {
        "id": entry_id,
        "at": event.occurred_at.isoformat(),
        "type": event.TYPE,
        "correlation_id": event.correlation_id,
    }
    source = _source(event)
    if source:
        step["source"] = source
    if isinstance(event, RegisterChallenged):
        step.update(status=401, reason="Unauthorized", stale=event.stale)
    elif isinstance(event, RegisterRejected):
        if event.account_sid is None:
            # Rejected before any account was found (an unknown realm, a malformed REGISTER): junk that would give
            # every made-up AOR a story of its own. It is counted (metrics, InfluxDB stats), not told.
            return None
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


def signature(event: Event) -> str:
    """What makes two decisions the same for a run ('' for decisions that are always their own step):
    a refresh with the same source, contact and grant, or the same failure from the same source."""
    source = _source(event) or ""
    if isinstance(event, RegistrationRefreshed):
        return f"refreshed|{source}|{event.contact or ''}|{event.advertised_expires_s}"
    if isinstance(event, RegistrationGranted):
        grant = f"{event.protocol}|{event.granted_expires_s}|{event.advertised_expires_s}"
        return f"granted|{source}|{event.contact}|{grant}"
    if isinstance(event, RegisterRejected):
        return f"rejected|{source}|{event.status}|{event.cause}"
    if isinstance(event, RegisterChallenged) and event.request is not None and not event.request.credentials:
        return f"challenged|{source}|{event.stale}"
    return ""


class HistoryProjection:
    def __init__(self, names: StreamNames, retention_s: int) -> None:
        self.names = names
        self.retention_s = retention_s

    def commands_for(self, entry_id: str, event: Event) -> list[RedisCommand]:
        aor = aor_of(event)
        step = summarize(entry_id, event) if aor else None
        if aor is None or step is None:
            return []
        at_ms = int(event.occurred_at.timestamp() * 1000)
        step["t"] = at_ms
        sig = signature(event)
        run = ""
        if sig:
            sig = step["sig"] = hashlib.blake2b(sig.encode(), digest_size=8).hexdigest()  # short: one per member
            # A run keeps its first time (`at`); its last is its `t`.
            run = _json.encode({**step, "type": "Run", "of": event.TYPE, "count": 1, "id": entry_id}).decode()
        request: RequestSummary | None = getattr(event, "request", None)
        if request is not None:
            # The REGISTER it answered is kept inside the decision's member (one list entry, not two) and told as
            # a step of its own when read (`_told`), its time as an offset from the decision's.
            asked = request_step(entry_id, event, request)
            kept = {key: value for key, value in asked.items() if key in REQUEST_FIELDS and key != "at"}
            step["request"] = {"dt": _ms(request.at) - at_ms, **kept}
        del step["at"]  # a decision's time is its `t`
        # A cached refresh changes nothing: it is told as a run from the first one on (a run of one, then
        # extended), never as steps of its own.
        member = run if isinstance(event, RegistrationRefreshed) else _json.encode(step).decode()
        oldest_ms = at_ms - self.retention_s * 1000
        key = self.names.history(aor)
        return [RECORD_SCRIPT.command((key,), (oldest_ms, self.retention_s, sig, run, at_ms, member))]

    async def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return [Outcome(writes=self.commands_for(d.entry_id, d.event)) for d in deliveries]


def describe_step(step: dict[str, object]) -> str:
    """One human line for one step of the story."""
    at = datetime.fromisoformat(str(step["at"])).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    kind = step["type"]
    source = step.get("source", "")
    if kind == "RegisterReceived":
        creds = f"with credentials of {step.get('username')}" if step.get("credentials") else "without credentials"
        via = f"via {step['sbc']} ({step.get('sbc_address')}) " if step.get("sbc") else ""
        text = f"REGISTER {via}from {source} over {step.get('transport')}, expires={step.get('expires')}, {creds}"
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
        late = step.get("late_ms")
        text = f"expired before it was decided: nobody waited for the answer ({late} ms past its deadline)"
    elif kind == "Run":
        text = describe_run(step)
    else:
        text = str(kind)
    return f"{at}  {text}"


def describe_run(step: dict[str, object]) -> str:
    first = datetime.fromisoformat(str(step["at"]))
    last = datetime.fromisoformat(str(step.get("last_at") or step["at"]))
    count = int(str(step.get("count", 1)))
    span = f"from {first.astimezone(UTC):%H:%M:%S} to {last.astimezone(UTC):%H:%M:%S}"
    every = f" (every ~{round((last - first).total_seconds() / (count - 1))} s)" if count > 1 else ""
    times = "once more" if count == 1 else f"{count} more times"
    kind = step.get("of")
    if kind == "RegistrationRefreshed":
        if count == 1:
            return f"200 OK: refreshed from the cached binding (expires {step.get('expires')} s, not re-authenticated)"
        return (
            f"200 OK: refreshed from the cached binding {count} times {span}{every}, same contact and source "
            f"(expires {step.get('expires')} s, not re-authenticated)"
        )
    if kind == "RegistrationGranted":
        return f"registered again {times} {span}{every}, same contact, source and grant ({step.get('expires')} s)"
    if kind == "RegisterRejected":
        return f"{step.get('status')} {step.get('reason')} {times} {span}{every}: {step.get('cause')}"
    return f"401 Unauthorized: challenged {times} {span}{every}, without credentials"


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


def _ms(at: object) -> int:
    return (datetime.fromisoformat(str(at)) - _EPOCH) // timedelta(milliseconds=1)


def one_story(
    scored: Iterable[tuple[str | bytes, float]], since_ms: int | None = None, until_ms: int | None = None
) -> list[dict[str, object]]:
    """Steps (member JSON, score) from Redis and the archive as one story, oldest first.

    A step found twice (a move to the archive cut short, a run grown after it was archived) is told once, at
    its later score. Bounds keep the steps whose time meets [since_ms, until_ms]; a run's time is the span from
    its first refresh (`at`) to its last (its score).
    """
    latest: dict[str, tuple[float, dict[str, object]]] = {}
    for member, score in scored:
        step = json.loads(member)
        known = latest.get(str(step["id"]))
        if known is None or score > known[0]:
            latest[str(step["id"])] = (score, step)
    return in_story_order(
        [
            told
            for score, step in latest.values()
            if (since_ms is None or score >= since_ms) and (until_ms is None or _first_ms(step) <= until_ms)
            for told in _told(step)
        ]
    )


def _first_ms(step: dict[str, object]) -> int:
    return _ms(step["at"]) if "at" in step else int(str(step["t"]))


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _told(stored: dict[str, object]) -> list[dict[str, object]]:
    """A stored member as the steps it tells: a decision with the REGISTER it answered is two, each with its
    time (`at`; a run's `last_at` too) written out again."""
    t = stored.pop("t", None)
    step: dict[str, object] = {"id": stored.pop("id"), "at": stored.pop("at", None) or _iso(int(str(t)))}
    step.update(stored)
    if step.get("type") == "Run" and "last_at" not in step and t is not None:
        step["last_at"] = _iso(int(str(t)))
    request = step.pop("request", None)
    if not isinstance(request, dict):
        return [step]
    at = request.get("at") or _iso(_ms(step["at"]) + int(str(request.get("dt", 0))))
    asked: dict[str, object] = {
        "id": f"{step['id']}.0",
        "at": at,
        "type": "RegisterReceived",
        "correlation_id": step.get("correlation_id"),
    }
    if "source" in step:
        asked["source"] = step["source"]
    asked.update((key, request[key]) for key in REQUEST_FIELDS if key in request and key != "at")
    return [asked, step]


async def load_history(
    redis: object,
    names: StreamNames,
    aor: str,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    archived: Iterable[tuple[str, float]] = (),
) -> list[dict[str, object]]:
    """The story of one AOR: its hot steps in Redis and the `archived` ones (member JSON, score), as one."""
    raw = await redis.lrange(names.history(aor), 0, -1)  # type: ignore[attr-defined]
    return one_story([*archived, *with_times(raw)], since_ms, until_ms)


def with_times(members: Iterable[str | bytes]) -> list[tuple[str | bytes, float]]:
    """History list members with their scores (their time in ms; a run's: its last refresh)."""
    return [(member, float(json.loads(member)["t"])) for member in members]
