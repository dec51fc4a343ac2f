"""The strict event codec: round trips, unknown types, missing fields, upcasters."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from events import EVENT_TYPES, EventCodec, EventDecodeError, RegisterChallenged, RegistrationExpired, stamp


def challenged() -> RegisterChallenged:
    return RegisterChallenged(
        **stamp(), aor="a@b", realm="b", nonce="n", source_ip="1.2.3.4", source_port=5, call_id="c"
    )


def test_round_trip_of_every_registered_type_name() -> None:
    codec = EventCodec(EVENT_TYPES)
    event = challenged()
    fields = codec.encode(event)
    assert fields[b"type"] == b"RegisterChallenged" and fields[b"v"] == b"1"
    assert codec.decode(fields) == event
    assert len({cls.TYPE for cls in EVENT_TYPES}) == len(EVENT_TYPES)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({b"type": b"Nope", b"v": b"1", b"data": b"{}"}, "unknown event type 'Nope'"),
        ({b"v": b"1", b"data": b"{}"}, "entry is not an event"),
        ({b"type": b"RegisterChallenged", b"v": b"x", b"data": b"{}"}, "entry is not an event"),
        ({b"type": b"RegisterChallenged", b"v": b"1", b"data": b"{}"}, "missing required field"),
        ({b"type": b"RegisterChallenged", b"v": b"1", b"data": b"not json"}, "RegisterChallenged v1"),
        ({b"type": b"RegisterChallenged", b"v": b"9", b"data": b"{}"}, "not a known schema version"),
    ],
)
def test_bad_entries_raise_decode_errors(fields: dict[bytes, bytes], message: str) -> None:
    with pytest.raises(EventDecodeError, match=message):
        EventCodec(EVENT_TYPES).decode(fields)


def test_wrong_field_type_raises() -> None:
    codec = EventCodec(EVENT_TYPES)
    data = msgspec.json.decode(codec.encode(challenged())[b"data"])
    data["source_port"] = "not a number"
    with pytest.raises(EventDecodeError):
        codec.decode({b"type": b"RegisterChallenged", b"v": b"1", b"data": msgspec.json.encode(data)})


def test_upcaster_turns_an_old_version_into_the_current_one() -> None:
    class ExpiredV2(RegistrationExpired, frozen=True, kw_only=True):
        VERSION = 2
        reason: str

    def v1_to_v2(old: dict[str, Any]) -> dict[str, Any]:
        return {**old, "reason": "lapsed"}

    v1 = RegistrationExpired(**stamp(), aor="a@b", expiry_time_ms=5, granted_event_id="1-0")
    old_fields = EventCodec([RegistrationExpired]).encode(v1)
    codec = EventCodec([ExpiredV2], {("RegistrationExpired", 1): v1_to_v2})
    event = codec.decode(old_fields)
    assert isinstance(event, ExpiredV2) and event.reason == "lapsed" and event.aor == "a@b"
    with pytest.raises(EventDecodeError, match="no upcaster"):
        EventCodec([ExpiredV2]).decode(old_fields)


def test_unregistered_event_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="not registered"):
        EventCodec([RegistrationExpired]).encode(challenged())
