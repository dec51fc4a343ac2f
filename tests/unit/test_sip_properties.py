"""Properties of the SIP codec: any input gives a message or SipParseError; generated messages round-trip."""

from __future__ import annotations

import string
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.sip import (
    KeepAlivePing,
    NameAddr,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    StreamFramer,
    Via,
    format_digest,
    make_response,
    parse_digest_credentials_jambonz,
    parse_digest_params,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_comma_list,
)
from tests.unit import sip_samples as samples

MODEST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SAMPLES = [
    samples.SIPP_REGISTER,
    samples.SOFTPHONE_COMPACT_REGISTER,
    samples.WEBSOCKET_REGISTER,
    samples.FEATURE_SERVER_OPTIONS,
    samples.UNAUTHORIZED_401,
    samples.FOLDED_REGISTER,
    samples.MESSAGE_WITH_BODY,
]
_ACCESSORS = (
    "call_id",
    "cseq",
    "vias",
    "top_via",
    "from_addr",
    "to_addr",
    "contacts",
    "expires",
    "max_forwards",
)
_BIG = 1 << 20


def exercise(message: SipMessage) -> None:
    """Every reader of a parsed message returns or raises SipParseError; a rewritten top Via re-parses."""
    for accessor in _ACCESSORS:
        try:
            getattr(message, accessor)
        except SipParseError:
            pass
    for name in ("authorization", "proxy-authorization", "www-authenticate"):
        value = message.headers.get(name)
        if value is None:
            continue
        for parse in (parse_digest_params, parse_digest_credentials_jambonz):
            try:
                parse(value)
            except SipParseError:
                pass
    if isinstance(message, SipRequest):
        try:
            parse_uri(message.uri)
        except SipParseError:
            pass
        try:
            response = make_response(message, 400, to_tag="t1")
        except SipParseError:
            response = None  # no Via: no answer can be formed
        if response is not None:  # a response we form must parse back to itself
            assert parse_message(response.serialize(), max_message_bytes=_BIG, max_headers=_BIG) == response
    try:
        via = message.top_via.with_source("192.0.2.1", 5060)
    except SipParseError:
        return
    message.top_via = via
    assert parse_message(message.serialize(), max_message_bytes=_BIG, max_headers=_BIG).top_via == via


def parse_or_reject(data: bytes) -> SipMessage | None:
    try:
        message = parse_message(data)
    except SipParseError:
        return None
    assert isinstance(message, (SipRequest, SipResponse))
    again = parse_message(message.serialize(), max_message_bytes=_BIG, max_headers=_BIG)
    assert again == message
    exercise(message)
    return message


# --- arbitrary and mutated input --------------------------------------------------------------------------

_sip_bytes = st.sampled_from(
    [
        b"\r\n",
        b"\n",
        b" ",
        b"\t",
        b":",
        b";",
        b",",
        b"<",
        b">",
        b'"',
        b"@",
        b"SIP/2.0",
        b"\x00",
        b"\xff",
        b"\r",
    ]
    + [
        b"Via: SIP/2.0/UDP h;rport",
        b"Contact: ",
        b"l: 3",
        b"Content-Length: 0",
        b"To: <sip:a@b>",
        b"CSeq: 1 A",
    ]
)


@MODEST
@given(st.binary(max_size=400))
def test_arbitrary_bytes_give_a_message_or_sip_parse_error(data: bytes) -> None:
    parse_or_reject(data)


@MODEST
@given(st.lists(st.one_of(_sip_bytes, st.binary(max_size=8)), max_size=40))
def test_sip_shaped_noise_gives_a_message_or_sip_parse_error(pieces: list[bytes]) -> None:
    parse_or_reject(b"REGISTER sip:a SIP/2.0\r\n" + b"".join(pieces))
    parse_or_reject(b"SIP/2.0 200 OK\r\n" + b"".join(pieces))


@MODEST
@given(st.sampled_from(SAMPLES), st.data())
def test_truncated_messages(sample: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(sample)))
    result = parse_or_reject(sample[:cut])
    if cut == len(sample):
        assert result is not None


@MODEST
@given(st.sampled_from(SAMPLES), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6))
def test_flipped_bytes(sample: bytes, flips: list[tuple[int, int]]) -> None:
    mutated = bytearray(sample)
    for position, value in flips:
        mutated[position % len(mutated)] = value
    parse_or_reject(bytes(mutated))


@MODEST
@given(st.sampled_from(SAMPLES), st.integers(0, 10_000), st.integers(0, 64), st.binary(max_size=16))
def test_spliced_bytes(sample: bytes, position: int, deleted: int, inserted: bytes) -> None:
    at = position % len(sample)
    parse_or_reject(sample[:at] + inserted + sample[at + deleted :])


# --- generated messages round-trip ------------------------------------------------------------------------

_token = st.text(string.ascii_letters + string.digits + "-.!%*_+`'~", min_size=1, max_size=12)
_word = st.text(
    st.characters(exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), exclude_characters=","),
    min_size=1,
    max_size=10,
)
_value = st.lists(_word, max_size=5).map(" ".join)
_headers = st.lists(st.tuples(_token, _value), max_size=12)
_bodies = st.binary(max_size=64)


@st.composite
def requests(draw: st.DrawFn) -> SipRequest:
    method = draw(_token)
    uri = draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30))
    return SipRequest(method, uri, draw(_headers), draw(_bodies))


@st.composite
def responses(draw: st.DrawFn) -> SipResponse:
    reason = draw(st.text(st.characters(codec="utf-8"), max_size=20).filter(str.isprintable))
    return SipResponse(draw(st.integers(100, 699)), reason, draw(_headers), draw(_bodies))


@MODEST
@given(st.one_of(requests(), responses()))
def test_generated_messages_round_trip(message: SipMessage) -> None:
    wire = message.serialize()
    parsed = parse_message(wire, max_headers=_BIG)
    assert parsed == message
    assert parsed.serialize() == wire


@MODEST
@given(requests(), st.data())
def test_line_ends_and_folding_do_not_change_the_message(request: SipRequest, data: st.DataObject) -> None:
    request.headers.remove("content-length")  # written once below, with the right value
    lines = [request.start_line()]
    for name, value in request.headers:
        words = value.split(" ")
        folded = words[0]
        for word in words[1:]:
            folded += data.draw(st.sampled_from([" ", "\r\n ", "\n\t", "\r\n \t "])) + word
        before_colon = data.draw(st.sampled_from(["", " ", "\t"]))
        after_colon = data.draw(st.sampled_from(["", " ", " \t "]))
        lines.append(f"{name}{before_colon}:{after_colon}{folded}")
    lines.append(f"Content-Length: {len(request.body)}")
    text = "".join(line + data.draw(st.sampled_from(["\r\n", "\n"])) for line in lines)
    wire = text.encode("utf-8") + data.draw(st.sampled_from([b"\r\n", b"\n"])) + request.body
    assert parse_message(wire, max_headers=_BIG) == request


# --- header values round-trip -----------------------------------------------------------------------------

_host = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
)
_param_text = st.text(string.ascii_letters + string.digits + "-.!%*_+`'~[]:/&$", min_size=1, max_size=10)
_params = st.dictionaries(_param_text.map(str.lower), st.one_of(st.none(), _param_text), max_size=4)
_user = st.text(string.ascii_letters + string.digits + "-_.!~*'()&=+$,;?/%", min_size=1, max_size=12)


@st.composite
def sip_uris(draw: st.DrawFn) -> SipUri:
    user = draw(st.one_of(st.none(), _user))
    password = draw(st.one_of(st.none(), st.text(string.ascii_letters + "&=+$,", max_size=6))) if user else None
    return SipUri(
        draw(st.sampled_from(["sip", "sips"])),
        draw(_host),
        user=user,
        password=password,
        port=draw(st.one_of(st.none(), st.integers(1, 65535))),
        params=draw(_params),
        headers=draw(st.dictionaries(_token, _token, max_size=2)),
    )


_quoted_value = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=10).map(
    lambda text: '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
)
_header_params = st.dictionaries(_token.map(str.lower), st.one_of(st.none(), _token, _quoted_value), max_size=4)
_display = st.one_of(st.none(), st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=12))


@MODEST
@given(sip_uris())
def test_uris_round_trip(uri: SipUri) -> None:
    assert parse_uri(str(uri)) == uri


@MODEST
@given(sip_uris(), _display, _header_params)
def test_name_addrs_round_trip_and_survive_lists(
    uri: SipUri, display: str | None, params: dict[str, str | None]
) -> None:
    address = NameAddr(uri, display_name=display, params=params)
    assert parse_name_addr(str(address)) == address
    listed = split_comma_list(f"{address}, {address},{address}")
    assert [parse_name_addr(item) for item in listed] == [address] * 3


@MODEST
@given(
    st.sampled_from(["UDP", "TCP", "TLS", "WS", "WSS", "SCTP"]),
    _host,
    st.one_of(st.none(), st.integers(1, 65535)),
    _header_params,
)
def test_vias_round_trip(transport: str, host: str, port: int | None, params: dict[str, str | None]) -> None:
    via = Via(transport, host, port, params)
    assert parse_via(str(via)) == via


@MODEST
@given(
    st.dictionaries(
        _token.map(str.lower),
        st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=12),
        min_size=1,
        max_size=6,
    )
)
def test_digest_params_round_trip(params: dict[str, str]) -> None:
    assert parse_digest_params(format_digest(params, frozenset())) == params


@MODEST
@given(st.text(max_size=200))
def test_digest_parsers_on_any_text(text: str) -> None:
    fields = parse_digest_credentials_jambonz(text, require_mandatory=False)
    assert fields["scheme"] == "digest" and fields["algorithm"]
    for header in (text, "Digest " + text):
        try:
            parse_digest_params(header)
        except SipParseError:
            pass


# --- stream framing ---------------------------------------------------------------------------------------


@MODEST
@given(st.lists(st.sampled_from([*SAMPLES, b"\r\n\r\n"]), min_size=1, max_size=6), st.data())
def test_stream_framer_any_chunking(items: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    framer = StreamFramer()
    frames: list[bytes | KeepAlivePing] = []
    for begin, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        frames += framer.feed(stream[begin:end])
    assert [frame if isinstance(frame, bytes) else b"\r\n\r\n" for frame in frames] == items
    assert framer.buffered_bytes == 0


@MODEST
@given(st.binary(max_size=300), st.integers(1, 50))
def test_stream_framer_on_noise(noise: bytes, chunk: int) -> None:
    framer = StreamFramer(max_message_bytes=1000)
    frames: list[object] = []
    try:
        for begin in range(0, len(noise), chunk):
            frames.extend(framer.feed(noise[begin : begin + chunk]))
    except SipParseError:
        pass  # a framing error ends the stream; what was framed before it still counts
    for frame in frames:
        if isinstance(frame, bytes):
            parse_or_reject(frame)  # only the parse may refuse; a re-parse failure is a test failure


# --- fast paths agree with the general parsers -------------------------------------------------------------

_URI_PIECES = st.sampled_from(
    [
        "sip:", "sips:", "SIP:", "tel:", "ſip:", "sıp:", "SİP:",
        "u000123", "alice", "+1555", "%20", "@", "@@", ":", "pw", "host.example",
        "10.0.0.1", "[2001:db8::1]", ":5060", ":0", ":65536", ":99999", ":05060", ";transport=udp", ";lr", ";=x",
        ";a=b c", ";x=\"q\"", "?h=v", "?", "&", "<", ">", " ", "\t", "é", "_", "-", ".", ";", "=", ",",
    ]
)  # fmt: skip


def _outcome_of(parse: Callable[[str], SipUri], text: str) -> object:
    try:
        uri = parse(text)
    except SipParseError as exc:
        return ("error", str(exc))
    return str((uri.scheme, uri.user, uri.password, uri.host, uri.port, uri.params, uri.headers))


@settings(max_examples=1500, deadline=None)
@given(st.lists(_URI_PIECES, min_size=1, max_size=8).map("".join))
def test_uri_fast_path_agrees_with_the_general_parser(text: str) -> None:
    from ingest.sip.uri import _parse_uri

    fast, general = _outcome_of(parse_uri, text), _outcome_of(_parse_uri, text)
    if isinstance(general, str):
        assert fast == general
    else:  # the fast path never accepts what the general parser refuses
        assert isinstance(fast, tuple)


def test_uri_fast_path_takes_the_usual_shapes() -> None:
    from ingest.sip import uri as uri_module

    for text in ("sip:u000123@bench.local", "SIP:alice@10.0.0.1:5061;transport=UDP;lr", "sips:host.example"):
        assert uri_module._SIMPLE_SIP_URI.fullmatch(text) is not None
        assert _outcome_of(parse_uri, text) == _outcome_of(uri_module._parse_uri, text)
    assert str(parse_uri("SIP:alice@10.0.0.1:5061;transport=UDP")) == "sip:alice@10.0.0.1:5061;transport=UDP"


_DIGEST_PIECES = st.sampled_from(
    [
        "Digest ", "username", "realm", "nonce", "cnonce", "uri", "response", "algorithm", "qop", "nc", "opaque",
        "=", '="', '"', ",", " ", "\t", "\n", "\u2028", "abc", "MD5", "auth", "00000001", "sip:x", "é",
    ]
)  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(st.lists(_DIGEST_PIECES, max_size=24).map("".join))
def test_digest_field_lookup_agrees_with_a_plain_search(text: str) -> None:
    from ingest.sip.digest import _JAMBONZ_LOOKUPS, _first_match

    for _, needle, pattern in _JAMBONZ_LOOKUPS:
        fast, plain = _first_match(pattern, text, needle), pattern.search(text)
        assert (fast and (fast.span(), fast.group(1))) == (plain and (plain.span(), plain.group(1)))
