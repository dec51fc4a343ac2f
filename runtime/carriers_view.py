"""`sbc-sidecar carriers` and `sbc-sidecar history --carrier`: outbound registrations, read from Redis.

`carriers` lists each gateway the regbot registers with its state, last answer, expiry and next attempt (the
original's in-process `regbotStatus()`, made visible). `history --carrier` tells, oldest first, the commands
and facts of one carrier (by voip_carrier_sid or name) still in the streams. No secret is printed.
"""

from __future__ import annotations

from datetime import UTC, datetime

from events import (
    CarrierDeactivated,
    CarrierRegistered,
    CarrierRegisterFailed,
    CarrierRegistrationDisabled,
    CarrierRegistrationStopped,
    Event,
    EventDecodeError,
    OutboundRegisterAnswered,
    OutboundRegisterRequested,
    StreamNames,
    default_codec,
)
from processors.regbot.decide import GatewayState, decode_state
from runtime.connections import open_redis
from runtime.settings import StreamSettings


def _when(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "-"
    at = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    delta = round((ms - now_ms) / 1000)
    return f"{at} ({'in ' if delta >= 0 else ''}{abs(delta)}s{'' if delta >= 0 else ' ago'})"


def describe_state(state: GatewayState, now_ms: int) -> str:
    last = f"{state.last_reason}" if state.last_reason else "-"
    pending = state.status == "pending"
    next_attempt = f"in flight (cseq {state.cseq - 1})" if pending else _when(state.next_at_ms, now_ms)
    lines = [
        f"{state.carrier_name or '-'} ({state.voip_carrier_sid}) gateway {state.sip_gateway_sid} via {state.target}",
        f"  state {state.status}; last answer {last} at {_when(state.last_answer_at_ms, now_ms)}",
        f"  expires {_when(state.expires_at_ms, now_ms)}; next attempt {next_attempt}"
        f"; failures counting toward the threshold {state.remove_failures}",
    ]
    return "\n".join(lines)


async def print_carriers(settings: StreamSettings) -> int:
    names = StreamNames(settings.eventlog.cluster_id)
    async with open_redis(settings.redis) as redis:
        raw = await redis.hgetall(names.regbot_state)  # type: ignore[misc]
        leader = await redis.exists(names.regbot_token)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    states = sorted((decode_state(v) for v in raw.values()), key=lambda s: (s.carrier_name, s.sip_gateway_sid))
    print(f"regbot leader lock {'held' if leader else 'free'}; {len(states)} gateways")
    for state in states:
        print(describe_state(state, now_ms))
    registered = sum(1 for s in states if s.status == "registered")
    print(f"total {len(states)}, registered {registered}")
    return 0


def describe_carrier_event(event: Event) -> str | None:
    """One line for an event of a carrier's story; None for other events."""
    at = event.occurred_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    gateway = getattr(event, "sip_gateway_sid", "")
    if isinstance(event, OutboundRegisterRequested):
        text = f"REGISTER {event.request_uri} requested via {event.next_hop} cseq {event.cseq} from {event.edge_id}"
    elif isinstance(event, OutboundRegisterAnswered):
        auth = " (with credentials)" if event.authenticated else ""
        text = f"answered {event.reason}{auth} cseq {event.last_cseq}"
    elif isinstance(event, CarrierRegistered):
        refresh = datetime.fromtimestamp(event.refresh_at_ms / 1000, UTC).strftime("%H:%M:%S")
        text = f"registered for {event.expires_s}s, refresh at {refresh}"
    elif isinstance(event, CarrierRegisterFailed):
        retry = (
            datetime.fromtimestamp(event.retry_at_ms / 1000, UTC).strftime("%H:%M:%S") if event.retry_at_ms else "never"
        )
        text = f"failed: {event.reason}; retry at {retry}; failures counted {event.remove_failures}"
    elif isinstance(event, CarrierRegistrationDisabled):
        text = f"outbound registration disabled (requires_register=0) after {event.failures} failures"
    elif isinstance(event, CarrierDeactivated):
        text = f"carrier deactivated (is_active=0) after {event.failures} failures"
    elif isinstance(event, CarrierRegistrationStopped):
        text = f"registration stopped: {event.reason}"
    else:
        return None
    return f"{at} gateway {gateway} {text}"


async def print_carrier_history(settings: StreamSettings, carrier: str) -> int:
    """The story of one carrier (sid or name), oldest first; exit status 1 when there is none."""
    names = StreamNames(settings.eventlog.cluster_id)
    codec = default_codec()
    events: list[tuple[tuple[int, int], Event]] = []
    async with open_redis(settings.redis) as redis:
        for stream in (names.commands, names.carriers):
            entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(stream)  # type: ignore[assignment]
            for entry_id, fields in entries:
                try:
                    event = codec.decode(fields)
                except EventDecodeError:
                    continue
                ms, _, seq = entry_id.decode().partition("-")
                events.append(((int(ms), int(seq or 0)), event))
    sids = {carrier}
    sids |= {e.voip_carrier_sid for _, e in events if getattr(e, "carrier_name", None) == carrier}  # type: ignore[attr-defined]
    story = sorted((k, e) for k, e in events if getattr(e, "voip_carrier_sid", None) in sids)
    lines = [line for _, e in story if (line := describe_carrier_event(e))]
    if not lines:
        print(f"no history for carrier {carrier}")
        return 1
    for line in lines:
        print(line)
    return 0
