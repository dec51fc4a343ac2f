"""The regbot's decisions, pure: when a gateway's REGISTER is due, and what its answer means (SPEC 4.4).

A gateway's state (`GatewayState`) lives in Redis (`regbot-state`, one JSON field per gateway) so that a new
leader continues the timers of the old one instead of starting from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import msgspec

from events import (
    CarrierDeactivated,
    CarrierRegistered,
    CarrierRegisterFailed,
    CarrierRegistrationDisabled,
    CarrierRegistrationStopped,
    Event,
    OutboundRegisterAnswered,
    stamp,
)

Status = Literal["pending", "registered", "failed", "stopped"]
STATUSES: tuple[Status, ...] = get_args(Status)


class GatewayState(msgspec.Struct, kw_only=True):
    """One gateway's registration as the regbot knows it. No secret in it."""

    sip_gateway_sid: str
    voip_carrier_sid: str
    carrier_name: str
    account_sid: str | None = None
    service_provider_sid: str | None = None
    trunk_type: str = "static_ip"
    target: str = ""  # what is shown: the next hop
    config_hash: str = ""  # keyed hash of the target's configuration (it includes the password)
    call_id: str = ""
    status: Status = "pending"
    attempt_id: str | None = None  # the attempt in flight, or the last one sent
    sent_at_ms: int = 0
    cseq: int = 0  # the last CSeq used
    last_status: int | None = None
    last_reason: str | None = None
    last_answer_at_ms: int | None = None
    expires_s: int = 0
    expires_at_ms: int | None = None
    next_at_ms: int | None = 0  # when the next REGISTER is due; None: never (stopped)
    remove_failures: int = 0
    addresses: tuple[str, ...] = ()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(GatewayState)


def encode_state(state: GatewayState) -> bytes:
    return _encoder.encode(state)


def decode_state(raw: bytes | str) -> GatewayState:
    return _decoder.decode(raw)


@dataclass(frozen=True, slots=True)
class Policy:
    default_expires_s: int = 3600
    min_expires_s: int = 30
    failure_retry_interval_s: int = 300
    failure_threshold: int = 3
    remove_codes: frozenset[int] = frozenset()
    attempt_timeout_ms: int = 70_000  # unanswered this long (two Timer Fs and more), it is sent again


def is_due(state: GatewayState | None, config_hash: str, now_ms: int, policy: Policy) -> bool:
    """Whether a gateway's REGISTER should go out now."""
    if state is None or state.config_hash != config_hash:
        return True  # a new regbot (or a changed configuration): register at once
    if state.status == "stopped":
        return False  # the failure threshold stopped it; a configuration change restarts it
    if state.status == "pending" and state.attempt_id is not None:
        return now_ms >= state.sent_at_ms + policy.attempt_timeout_ms
    return state.next_at_ms is not None and now_ms >= state.next_at_ms


def granted_expires(answer: OutboundRegisterAnswered, policy: Policy) -> int:
    """SPEC 4.4: the default, overridden by Expires, overridden by the first Contact's expires; floored."""
    expires = policy.default_expires_s
    if answer.expires_header is not None:
        expires = answer.expires_header
    if answer.contact_expires is not None:
        expires = answer.contact_expires
    return max(expires, policy.min_expires_s)


def decide_answer(
    state: GatewayState,
    answer: OutboundRegisterAnswered,
    policy: Policy,
    now_ms: int,
    causation_id: str | None = None,
) -> tuple[GatewayState, list[Event]]:
    """The facts an answer makes and the gateway's next state. An answer to a retired attempt is ignored."""
    if answer.attempt_id != state.attempt_id or state.status != "pending":
        return state, []
    envelope = {"correlation_id": answer.correlation_id, "causation_id": causation_id}
    common = {
        "voip_carrier_sid": state.voip_carrier_sid,
        "sip_gateway_sid": state.sip_gateway_sid,
        "carrier_name": state.carrier_name,
    }
    addresses = answer.addresses or state.addresses
    state = msgspec.structs.replace(
        state,
        cseq=max(state.cseq, answer.last_cseq),
        last_status=answer.status,
        last_reason=answer.reason,
        last_answer_at_ms=now_ms,
        addresses=addresses,
    )
    if answer.status == 200:
        expires = granted_expires(answer, policy)
        refresh_at = now_ms + expires * 500  # at expires / 2
        registered = CarrierRegistered(
            **stamp(**envelope),
            **common,
            trunk_type=state.trunk_type,
            status=answer.status,
            reason=answer.reason,
            call_id=answer.call_id,
            cseq=answer.first_cseq,
            expires_s=expires,
            refresh_at_ms=refresh_at,
            addresses=addresses,
        )
        state = msgspec.structs.replace(
            state,
            status="registered",
            expires_s=expires,
            expires_at_ms=now_ms + expires * 1000,
            next_at_ms=refresh_at,
            remove_failures=0,
        )
        return state, [registered]
    failures = state.remove_failures + (1 if answer.status in policy.remove_codes else 0)
    stop = failures >= policy.failure_threshold
    retry_at = None if stop else now_ms + policy.failure_retry_interval_s * 1000
    events: list[Event] = [
        CarrierRegisterFailed(
            **stamp(**envelope),
            **common,
            trunk_type=state.trunk_type,
            status=answer.status,
            reason=answer.reason,
            call_id=answer.call_id,
            cseq=answer.first_cseq,
            retry_at_ms=retry_at,
            remove_failures=failures,
            addresses=addresses,
        )
    ]
    state = msgspec.structs.replace(
        state,
        status="stopped" if stop else "failed",
        expires_s=0,
        expires_at_ms=None,
        next_at_ms=retry_at,
        remove_failures=failures,
    )
    if stop:
        threshold = {
            **common,
            "account_sid": state.account_sid,
            "service_provider_sid": state.service_provider_sid,
            "status": answer.status,
            "failures": failures,
        }
        if state.trunk_type == "reg":
            events.append(CarrierDeactivated(**stamp(**envelope), **threshold))  # type: ignore[arg-type]
        else:
            events.append(CarrierRegistrationDisabled(**stamp(**envelope), **threshold))  # type: ignore[arg-type]
        events.append(
            CarrierRegistrationStopped(
                **stamp(**envelope), **common, reason=f"{failures} failures with {answer.status}", addresses=addresses
            )
        )
    return state, events
