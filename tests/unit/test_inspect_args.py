"""The arguments of `history` and `events tail`: AORs as users write them, times, types, the filter."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from runtime.inspect import InspectError, TailFilter, entry_key, parse_aor, parse_since, parse_types


@pytest.mark.parametrize(
    "written",
    [
        "demo@sip.demo.local",
        " demo@sip.demo.local ",
        "sip:demo@sip.demo.local",
        "SIP:demo@sip.demo.local",
        "sips:demo@sip.demo.local",
        "<sip:demo@sip.demo.local>",
        '"Demo Phone" <sips:demo@sip.demo.local;transport=tls>',
        "sip:demo@sip.demo.local:5060",
        "sip:demo@sip.demo.local;transport=tcp?X-Foo=bar",
    ],
)
def test_every_way_of_writing_an_address_gives_the_aor(written: str) -> None:
    assert parse_aor(written) == "demo@sip.demo.local"


def test_an_ipv6_host_keeps_its_brackets_and_loses_its_port() -> None:
    assert parse_aor("sip:alice@[2001:db8::1]:5060") == "alice@[2001:db8::1]"


@pytest.mark.parametrize("written", ["sip.demo.local", "sip:@sip.demo.local", "<sip:demo@sip.demo.local", "a b@c"])
def test_what_is_not_an_aor_is_refused_with_the_forms_that_are(written: str) -> None:
    with pytest.raises(InspectError, match="user@host"):
        parse_aor(written)


def test_since_takes_a_duration_back_from_now_or_a_time() -> None:
    now = datetime(2026, 11, 26, 9, 15, tzinfo=UTC)
    now_ms = int(now.timestamp() * 1000)
    assert parse_since("90s", now) == now_ms - 90_000
    assert parse_since("15m", now) == now_ms - 900_000
    assert parse_since("2h", now) == now_ms - 7_200_000
    assert parse_since("1d", now) == now_ms - 86_400_000
    assert parse_since("2026-11-26T09:00", now) == now_ms - 900_000  # no zone: UTC
    assert parse_since("2026-11-26T10:00+01:00", now) == now_ms - 900_000
    with pytest.raises(InspectError, match="--since 'yesterday'"):
        parse_since("yesterday", now)


def test_types_are_matched_without_case_and_checked() -> None:
    assert parse_types(["registerrejected,RegistrationGranted", "RegisterChallenged"]) == {
        "RegisterRejected",
        "RegistrationGranted",
        "RegisterChallenged",
    }
    with pytest.raises(InspectError, match="'Registered' is no event type"):
        parse_types(["Registered"])


def test_the_filter_admits_by_time_type_and_aor() -> None:
    where = TailFilter(aor="demo@sip.demo.local", types=frozenset({"RegisterRejected"}), since_ms=1000)
    assert where.admits("1000-0", "RegisterRejected", "demo@sip.demo.local")
    assert not where.admits("999-5", "RegisterRejected", "demo@sip.demo.local")
    assert not where.admits("1000-0", "RegistrationGranted", "demo@sip.demo.local")
    assert not where.admits("1000-0", "RegisterRejected", "other@sip.demo.local")
    assert not where.admits("1000-0", "RegisterRejected", None)
    assert TailFilter().admits("0-0", "ServerCheckedIn", None)


def test_stream_ids_order_by_time_then_sequence() -> None:
    ids = ["1700000000001-0", "1700000000000-10", "1700000000000-2", "999-0"]
    assert sorted(ids, key=entry_key) == ["999-0", "1700000000000-2", "1700000000000-10", "1700000000001-0"]
