"""The order in which `sbc-sidecar history` tells an AOR's story."""

from __future__ import annotations

from projections.history import in_story_order


def step(entry_id: str, kind: str, at: str, correlation_id: str) -> dict[str, object]:
    return {"id": entry_id, "type": kind, "at": f"2026-11-26T10:00:00.{at}+00:00", "correlation_id": correlation_id}


def test_each_decision_follows_its_request_even_when_the_next_request_shares_its_millisecond() -> None:
    # The registrar stamps decisions to the whole millisecond: the 401 reads 10.000 while its request
    # was stamped 10.100, and the phone's second REGISTER arrived at 10.900, within that millisecond.
    first = step("1-0", "RegisterReceived", "010100", "a")
    challenge = step("2-0", "RegisterChallenged", "010000", "a")
    second = step("1-1", "RegisterReceived", "010900", "b")
    grant = step("2-1", "RegistrationGranted", "011000", "b")
    later_expiry = step("2-2", "RegistrationExpired", "900000", "c")
    shuffled = [grant, later_expiry, second, challenge, first]
    assert in_story_order(shuffled) == [first, challenge, second, grant, later_expiry]


def test_steps_of_different_transactions_keep_time_order() -> None:
    early = step("1-0", "RegisterReceived", "001000", "x")
    early_answer = step("2-0", "RegisterRejected", "003000", "x")
    late = step("1-1", "RegisterReceived", "002000", "y")  # a second phone's request between the two
    late_answer = step("2-1", "RegisterChallenged", "004000", "y")
    assert in_story_order([late_answer, late, early_answer, early]) == [early, early_answer, late, late_answer]


def test_a_request_comes_before_its_decision_even_when_the_decision_is_stamped_earlier() -> None:
    # A registrar on another host, or a clock stepped back: the 401 carries a time before its request's.
    request = step("1-0", "RegisterReceived", "010100", "a")
    challenge = step("2-0", "RegisterChallenged", "009000", "a")
    assert in_story_order([challenge, request]) == [request, challenge]
