"""The SIP codec on real messages: framing, headers, URIs, Via, Contact, digest, responses, streams."""

from __future__ import annotations

import pytest

from ingest.sip import (
    KEEPALIVE_PING,
    CSeq,
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    StreamFramer,
    Via,
    build_www_authenticate,
    canonical_name,
    make_response,
    parse_digest_credentials_jambonz,
    parse_digest_params,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_comma_list,
    unquote,
)
from tests.unit import sip_samples as samples


def parse_request(data: bytes) -> SipRequest:
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    return message


# --- real messages -----------------------------------------------------------------------------------------


def test_sipp_register_fields() -> None:
    request = parse_request(samples.SIPP_REGISTER)
    assert (request.method, request.uri, request.body) == ("REGISTER", "sip:jambonz.org", b"")
    assert request.call_id == "1-2184@127.0.0.1"
    assert request.cseq == CSeq(2, "REGISTER")
    via = request.top_via
    assert (via.transport, via.host, via.port, via.branch) == ("UDP", "127.0.0.1", 5061, "z9hG4bK-2184-1-3")
    assert request.from_addr.tag == "2184SIPpTag001"
    to = request.to_addr
    assert (to.uri.user, to.uri.host, to.uri.port, to.tag, to.uri_text) == (
        "john",
        "jambonz.org",
        None,
        None,
        "sip:john@jambonz.org",
    )
    contacts = request.contacts
    assert contacts != "*" and len(contacts) == 1
    assert contacts[0].uri_text == "sip:john@127.0.0.1:5061"
    assert contacts[0].params == {"expires": "3600"}
    assert request.expires == 3600
    assert request.max_forwards == 70
    assert request.headers.get("user-agent") == "SIPp"


def test_sipp_register_authorization_both_ways() -> None:
    value = parse_request(samples.SIPP_REGISTER).headers.get("Authorization")
    assert value is not None
    strict = parse_digest_params(value)
    assert list(strict) == [
        "username",
        "realm",
        "cnonce",
        "nc",
        "qop",
        "uri",
        "nonce",
        "response",
        "algorithm",
    ]
    assert strict["uri"] == "sip:jambonz.org" and strict["qop"] == "auth" and strict["algorithm"] == "MD5"
    jambonz = parse_digest_credentials_jambonz(value)
    assert jambonz == {
        "scheme": "digest",
        "username": "john",
        "realm": "jambonz.org",
        "nonce": "157590482938000",
        "uri": "sip:jambonz.org",
        "response": "a4f1ba2b3c5d8e9f00112233445566ab",
        "qop": "auth",
        "nc": "00000001",
        "cnonce": "6b8b4567",
        "algorithm": "MD5",  # the trailing unquoted algorithm is lost and defaulted, so it comes last
    }
    assert list(jambonz)[-1] == "algorithm"


def test_sipp_register_serializes_back_byte_for_byte() -> None:
    assert parse_message(samples.SIPP_REGISTER).serialize() == samples.SIPP_REGISTER


def test_compact_headers_are_found_by_full_name_and_keep_their_spelling() -> None:
    request = parse_request(samples.SOFTPHONE_COMPACT_REGISTER)
    headers = request.headers
    assert headers.names()[:4] == ["v", "f", "t", "i"]
    assert headers.get("Call-ID") == headers.get("i") == "8b1c2e1f-3c2a-4f4e-9d1a-2b3c4d5e6f70"
    assert "CONTACT" in headers and "content-length" in headers
    assert headers.get_list("Supported") == ["outbound", "path"]
    assert request.from_addr.display_name == "Alice Liddell"
    assert bytes(request).startswith(
        b"REGISTER sip:jambonz.org SIP/2.0\r\nv: SIP/2.0/UDP [2001:db8::10]:5060;"
    )
    assert b"\r\nl: 0\r\n\r\n" in bytes(request)


def test_ipv6_via_and_contact() -> None:
    request = parse_request(samples.SOFTPHONE_COMPACT_REGISTER)
    via = request.top_via
    assert (via.host, via.port, via.has_rport, via.rport) == ("[2001:db8::10]", 5060, True, None)
    contacts = request.contacts
    assert contacts != "*"
    uri = contacts[0].uri
    assert (uri.user, uri.host, uri.port, uri.transport) == ("alice", "[2001:db8::10]", 5060, "udp")
    instance = contacts[0].params["+sip.instance"]
    assert instance == '"<urn:uuid:0d9a2c44-ffee-4b3c-9e55-0123456789ab>"'
    assert unquote(instance) == "<urn:uuid:0d9a2c44-ffee-4b3c-9e55-0123456789ab>"
    assert contacts[0].params["expires"] == "600"


def test_websocket_register() -> None:
    request = parse_request(samples.WEBSOCKET_REGISTER)
    via = request.top_via
    assert (via.transport, via.host, via.port) == ("WSS", "df7jal23ls0d.invalid", None)
    contacts = request.contacts
    assert contacts != "*"
    contact = contacts[0]
    assert contact.uri.transport == "ws" and contact.uri.user == "k2b4v3vd"
    assert list(contact.params) == ["+sip.ice", "reg-id", "+sip.instance", "expires"]
    assert contact.params["+sip.ice"] is None and contact.params["reg-id"] == "1"
    assert contact.params["expires"] == "600"
    assert request.headers.get_list("Allow")[:3] == ["ACK", "CANCEL", "INVITE"]
    value = request.headers.get("authorization")
    assert value is not None
    jambonz = parse_digest_credentials_jambonz(value)
    assert (jambonz["nc"], jambonz["qop"], jambonz["algorithm"]) == ("00000001", "auth", "MD5")
    assert list(jambonz)[:3] == ["scheme", "username", "realm"]
    assert parse_digest_params(value)["nc"] == "00000001"


def test_feature_server_options() -> None:
    request = parse_request(samples.FEATURE_SERVER_OPTIONS)
    assert request.method == "OPTIONS" and request.uri == "sip:10.0.0.5:5060"
    assert request.headers.get("x-fs-status") == "open"
    assert request.headers.get("X-FS-ServiceUrl") == "http://10.0.0.7:3000"
    assert "X-RTP-Status" not in request.headers
    assert request.cseq.number == 12345
    assert request.top_via.has_rport


def test_401_response() -> None:
    response = parse_message(samples.UNAUTHORIZED_401)
    assert isinstance(response, SipResponse)
    assert (response.status, response.reason) == (401, "Unauthorized")
    via = response.top_via
    assert (via.received, via.rport) == ("127.0.0.1", 5061)
    assert response.to_addr.tag == "aprqngfrt"
    challenge = response.headers.get("www-authenticate")
    assert challenge == build_www_authenticate("jambonz.org", "157590482938000")
    assert challenge is not None
    assert parse_digest_params(challenge) == {
        "realm": "jambonz.org",
        "algorithm": "MD5",
        "qop": "auth",
        "nonce": "157590482938000",
    }
    assert bytes(response) == samples.UNAUTHORIZED_401


def test_lf_only_line_ends_parse_like_crlf() -> None:
    for sample in (samples.SIPP_REGISTER, samples.FOLDED_REGISTER, samples.MESSAGE_WITH_BODY):
        lf_only = sample.replace(b"\r\n", b"\n")
        assert parse_message(lf_only) == parse_message(sample)
    mixed = samples.SIPP_REGISTER.replace(b"\r\nTo:", b"\nTo:")
    assert parse_message(mixed) == parse_message(samples.SIPP_REGISTER)


def test_folded_headers_are_unfolded_with_one_space() -> None:
    request = parse_request(samples.FOLDED_REGISTER)
    assert request.headers.get("subject") == "I know you're there, pick up the phone and talk to me!"
    assert request.top_via.branch == "z9hG4bKnashds7"
    assert request.from_addr.tag == "9fxced76sl"
    assert request.cseq == CSeq(8, "REGISTER")
    assert b"\r\nCSeq: 8 REGISTER\r\n" in bytes(request)


def test_repeated_and_combined_via_fields() -> None:
    request = parse_request(samples.MESSAGE_WITH_BODY)
    assert len(request.headers.get_all("via")) == 2
    assert [via.host for via in request.vias] == ["203.0.113.9", "198.51.100.1", "192.0.2.55"]
    assert [via.transport for via in request.vias] == ["UDP", "TCP", "UDP"]
    assert request.body == b"Watson, come here."
    assert request.headers.get("Content-Type") == "text/plain"


# --- body and Content-Length ------------------------------------------------------------------------------


def test_body_is_bounded_by_content_length_and_extra_bytes_dropped() -> None:
    message = parse_message(samples.MESSAGE_WITH_BODY + b"trailing junk")
    assert message.body == b"Watson, come here."


def test_without_content_length_the_rest_is_the_body() -> None:
    data = samples.MESSAGE_WITH_BODY.replace(b"Content-Length: 18\r\n", b"")
    assert parse_message(data).body == b"Watson, come here."


def test_content_length_larger_than_the_data_is_an_error() -> None:
    with pytest.raises(SipParseError, match="shorter than Content-Length"):
        parse_message(samples.MESSAGE_WITH_BODY[:-1])


@pytest.mark.parametrize("value", [b"abc", b"-1", b"", b"12345678901", b"1 2"])
def test_bad_content_length(value: bytes) -> None:
    with pytest.raises(SipParseError):
        parse_message(samples.MESSAGE_WITH_BODY.replace(b"Content-Length: 18", b"Content-Length: " + value))


def test_conflicting_content_lengths() -> None:
    data = samples.MESSAGE_WITH_BODY.replace(b"c: text/plain", b"l: 5")
    with pytest.raises(SipParseError, match="conflicting"):
        parse_message(data)


def test_serializer_recomputes_content_length_and_uses_crlf() -> None:
    request = parse_request(samples.MESSAGE_WITH_BODY.replace(b"\r\n", b"\n"))
    request.body = b"hi"
    wire = bytes(request)
    assert wire.endswith(b"\r\nContent-Length: 2\r\n\r\nhi")
    assert b"\n" not in wire.replace(b"\r\n", b"")
    fresh = SipRequest("OPTIONS", "sip:a.example", [("Via", "SIP/2.0/UDP h;branch=z9hG4bK1")], b"xyz")
    assert fresh.serialize() == (
        b"OPTIONS sip:a.example SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContent-Length: 3\r\n\r\nxyz"
    )


def test_missing_blank_line_means_no_body() -> None:
    data = samples.FEATURE_SERVER_OPTIONS.rstrip(b"\r\n") + b"\r\n"
    request = parse_request(data)
    assert request.headers.get("content-length") == "0" and request.body == b""


@pytest.mark.parametrize(
    "data, body",
    [
        (b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 2\r\n\n\r\n", b"\r\n"),  # CRLF head, LF blank line
        (b"OPTIONS sip:a SIP/2.0\nContent-Length: 2\n\r\n\n\n", b"\n\n"),  # LF head, CRLF blank line
        (b"OPTIONS sip:a SIP/2.0\nl: 2\n\nab", b"ab"),
    ],
)
def test_the_first_blank_line_ends_the_head_whatever_its_line_end(data: bytes, body: bytes) -> None:
    assert parse_message(data).body == body
    assert StreamFramer().feed(data) == [data]


def test_leading_crlf_before_the_start_line_is_ignored() -> None:
    assert parse_message(b"\r\n\r\n" + samples.SIPP_REGISTER) == parse_message(samples.SIPP_REGISTER)


# --- limits and malformed input ---------------------------------------------------------------------------


def test_max_message_size() -> None:
    parse_message(samples.SIPP_REGISTER, max_message_bytes=len(samples.SIPP_REGISTER))
    with pytest.raises(SipParseError, match="larger than"):
        parse_message(samples.SIPP_REGISTER, max_message_bytes=len(samples.SIPP_REGISTER) - 1)
    with pytest.raises(SipParseError):
        parse_message(samples.SIPP_REGISTER.replace(b"SIPp\r\n", b"x" * 70000 + b"\r\n"))


def test_a_header_line_without_a_colon_is_refused_even_when_it_names_a_known_header() -> None:
    parse_message(samples.SIPP_REGISTER)  # its header names are known from here on
    for line in (b"Via", b"Call-ID", b"X-Unknown-Name"):
        with pytest.raises(SipParseError, match="without ':'"):
            parse_message(samples.SIPP_REGISTER.replace(b"Max-Forwards", line + b"\r\nMax-Forwards", 1))


def test_max_header_count() -> None:
    assert len(parse_message(samples.SIPP_REGISTER, max_headers=12).headers) == 12
    with pytest.raises(SipParseError, match="headers"):
        parse_message(samples.SIPP_REGISTER, max_headers=11)
    many = samples.FEATURE_SERVER_OPTIONS.replace(b"X-FS-Calls: 0\r\n", b"X-Pad: 1\r\n" * 201)
    with pytest.raises(SipParseError):
        parse_message(many)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n\r\n",
        b"REGISTER sip:jambonz.org\r\n\r\n",
        b"REGISTER  sip:jambonz.org SIP/2.0\r\n\r\n",
        b"REGISTER sip:jambonz.org SIP/3.0\r\n\r\n",
        b"REG\x00STER sip:jambonz.org SIP/2.0\r\n\r\n",
        b"REGISTER sip:jambonz\x00.org SIP/2.0\r\n\r\n",
        b"REGISTER sip:jambonz.org SIP/2.0\x00\r\n\r\n",
        b"REG(ISTER sip:jambonz.org SIP/2.0\r\n\r\n",
        b"REGISTER\tsip:jambonz.org SIP/2.0\r\n\r\n",
        b"SIP/2.0 20 OK\r\n\r\n",
        b"SIP/2.0 2000 OK\r\n\r\n",
        b"SIP/2.0 099 Low\r\n\r\n",
        b"SIP/2.0 7xx Odd\r\n\r\n",
        b"SIP/2.0 \xd9\xa2\xd9\xa0\xd9\xa0 OK\r\n\r\n",  # Arabic-Indic digits are not a status code
        b"SIP/1.0 200 OK\r\n\r\n",
        b"OPTIONS sip:a SIP/2.0\r\nVia SIP/2.0/UDP h\r\n\r\n",
        b"OPTIONS sip:a SIP/2.0\r\n Via: SIP/2.0/UDP h\r\n\r\n",
        b"OPTIONS sip:a SIP/2.0\r\nVi a: x\r\n\r\n",
        b"OPTIONS sip:a SIP/2.0\r\n: x\r\n\r\n",
        b"OPTIONS sip:a SIP/2.0\r\nX-A: 1\rX-B: 2\r\n\r\n",
        b"OPTIONS sip:a SIP/2.0\r\nX-A: a\x00b\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
def test_malformed_messages_raise_sip_parse_error(data: bytes) -> None:
    with pytest.raises(SipParseError):
        parse_message(data)


def test_sip_parse_error_is_a_value_error() -> None:
    assert issubclass(SipParseError, ValueError)


def test_non_utf8_bytes_in_headers_do_not_raise_and_round_trip() -> None:
    data = samples.FEATURE_SERVER_OPTIONS.replace(b"X-FS-Calls: 0", b"X-FS-Calls: \xff\xfe caf\xc3\xa9")
    request = parse_request(data)
    assert request.headers.get("x-fs-calls") == "\udcff\udcfe café"
    assert bytes(request) == data


def test_response_without_reason_phrase() -> None:
    response = parse_message(b"SIP/2.0 200\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(response, SipResponse) and (response.status, response.reason) == (200, "")


# --- Headers ----------------------------------------------------------------------------------------------


def test_headers_lookup_order_and_mutation() -> None:
    headers = Headers([("Via", "a"), ("v", "b"), ("X-Thing", "1"), ("VIA", "c")])
    assert headers.get_all("via") == ["a", "b", "c"]
    assert headers.get("x-thing") == "1" and headers.get("missing", "d") == "d"
    headers.set("Via", "z")
    assert list(headers) == [("Via", "z"), ("X-Thing", "1")]
    headers.add("x-thing", "2")
    assert headers.get_all("X-THING") == ["1", "2"]
    assert headers.remove("X-Thing") == 2 and len(headers) == 1
    headers.set("Expires", "30")
    assert list(headers) == [("Via", "z"), ("Expires", "30")]
    assert repr(Headers([("Authorization", "Digest response=secret")])) == "Headers(['Authorization'])"


@pytest.mark.parametrize(
    "name, value", [("Bad Name", "x"), ("", "x"), ("X-A", "a\r\nX-Injected: 1"), ("X", "\n")]
)
def test_headers_refuse_injection(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        Headers().add(name, value)


def test_canonical_names() -> None:
    assert [canonical_name(n) for n in ("i", "CALL-ID", "cseq", "www-authenticate", "X-FS-Status", "l")] == [
        "Call-ID",
        "Call-ID",
        "CSeq",
        "WWW-Authenticate",
        "X-FS-Status",
        "Content-Length",
    ]


def test_every_compact_form() -> None:
    compact = "vftimlkscoe rbuxajdyn".replace(" ", "")
    data = b"OPTIONS sip:a SIP/2.0\r\n" + b"".join(f"{c}: {c}\r\n".encode() for c in compact) + b"\r\n"
    headers = parse_message(data.replace(b"l: l", b"l: 0")).headers
    full = [
        "Via", "From", "To", "Call-ID", "Contact", "Content-Length", "Supported", "Subject", "Content-Type",
        "Event", "Content-Encoding", "Refer-To", "Referred-By", "Allow-Events", "Session-Expires",
        "Accept-Contact", "Reject-Contact", "Request-Disposition", "Identity", "Identity-Info",
    ]  # fmt: skip
    assert [headers.get(name) for name in full] == [c if c != "l" else "0" for c in compact]


@pytest.mark.parametrize(
    "value, elements",
    [
        ("a, b,c", ["a", "b", "c"]),
        ('"Doe, John" <sip:j@x>, <sip:k@y;p=1,2>', ['"Doe, John" <sip:j@x>', "<sip:k@y;p=1,2>"]),
        ('<sip:a@b>;x="1,2", sip:c@d', ['<sip:a@b>;x="1,2"', "sip:c@d"]),
        ('"say \\"hi, there\\"" <sip:a@b>', ['"say \\"hi, there\\"" <sip:a@b>']),
        (" , a, , ", ["a"]),
    ],
)
def test_comma_lists_do_not_split_inside_quotes_or_brackets(value: str, elements: list[str]) -> None:
    assert split_comma_list(value) == elements


@pytest.mark.parametrize("value", ['"open, <sip:a@b>', "<sip:a@b, c"])
def test_unbalanced_lists(value: str) -> None:
    with pytest.raises(SipParseError):
        split_comma_list(value)


# --- URIs and addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, scheme, user, password, host, port, params, headers",
    [
        ("sip:jambonz.org", "sip", None, None, "jambonz.org", None, {}, {}),
        ("SIP:john@jambonz.org:5080", "sip", "john", None, "jambonz.org", 5080, {}, {}),
        ("sips:alice:secret@example.com;transport=tls", "sips", "alice", "secret", "example.com", None,
         {"transport": "tls"}, {}),
        ("sip:alice@[2001:db8::1]:5070;transport=tcp", "sip", "alice", None, "[2001:db8::1]", 5070,
         {"transport": "tcp"}, {}),
        ("sip:[::1]", "sip", None, None, "[::1]", None, {}, {}),
        ("sip:+1-212-555-1212:1234@gateway.com;user=phone", "sip", "+1-212-555-1212", "1234", "gateway.com",
         None, {"user": "phone"}, {}),
        ("sip:alice;day=tuesday@atlanta.com", "sip", "alice;day=tuesday", None, "atlanta.com", None, {}, {}),
        ("sip:10.0.0.1:5060;LR;Maddr=239.255.255.1;ttl=15", "sip", None, None, "10.0.0.1", 5060,
         {"lr": None, "maddr": "239.255.255.1", "ttl": "15"}, {}),
        ("sip:bob@b.example?subject=project%20x&priority=urgent", "sip", "bob", None, "b.example", None, {},
         {"subject": "project%20x", "priority": "urgent"}),
        ("tel:+1-201-555-0123;phone-context=example.com", "tel", "+1-201-555-0123", None, "", None,
         {"phone-context": "example.com"}, {}),
    ],
)  # fmt: skip
def test_uris(
    text: str,
    scheme: str,
    user: str | None,
    password: str | None,
    host: str,
    port: int | None,
    params: dict[str, str | None],
    headers: dict[str, str],
) -> None:
    uri = parse_uri(text)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (scheme, user, password, host, port)
    assert uri.params == params and list(uri.params) == list(params)
    assert uri.headers == headers
    assert parse_uri(str(uri)) == uri


@pytest.mark.parametrize(
    "text",
    [
        "sip:john@jambonz.org@jambonz.org",  # the registrar answers 403 "Invalid address of record"
        "http://jambonz.org",
        "jambonz.org",
        "sip:",
        "sip:@jambonz.org",
        "sip:john@",
        "sip:john@[2001:db8::1",
        "sip:john@[2001:db8::zz]",
        "sip:john@[::1]x",
        "sip:john@host:99999",
        "sip:john@host:",
        "sip:john@host:50a",
        "sip:john@ho st",
        "sip:jo hn@host",
        "sip:john@host;transport=u dp",
        "sip:john@host;=x",
        "sip:john@host?a b=c",
        "tel:",
    ],
)
def test_bad_uris(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


def test_name_addr_forms() -> None:
    quoted = parse_name_addr(
        '"Mr. \\"Watson\\"" <sip:watson@worcester.bell-telephone.com;transport=tcp>;tag=1'
    )
    assert quoted.display_name == 'Mr. "Watson"'
    assert quoted.uri.params == {"transport": "tcp"} and quoted.params == {"tag": "1"}
    assert quoted.uri_text == "sip:watson@worcester.bell-telephone.com;transport=tcp"
    token = parse_name_addr("Bob Smith <sip:bob@biloxi.com>")
    assert token.display_name == "Bob Smith" and token.params == {}
    bare = parse_name_addr("sip:bob@biloxi.com;tag=a6c85cf;expires=60")
    assert (
        bare.display_name is None
        and bare.uri.params == {}
        and bare.params == {"tag": "a6c85cf", "expires": "60"}
    )
    spec_with_bracket_in_param = parse_name_addr('sip:a@b;+sip.instance="<urn:uuid:1>"')
    assert spec_with_bracket_in_param.params == {"+sip.instance": '"<urn:uuid:1>"'}
    assert parse_name_addr(str(quoted)) == quoted


@pytest.mark.parametrize(
    "text",
    [
        "",
        '"unterminated <sip:a@b>',
        '"x" sip:a@b',
        "<sip:a@b",
        "<sip:a@b> junk",
        "<http://a>",
        "A<B <sip:a@b>",
    ],
)
def test_bad_name_addrs(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_name_addr(text)


def test_to_with_two_at_signs_fails_but_the_message_still_parses() -> None:
    data = samples.SIPP_REGISTER.replace(
        b"To: <sip:john@jambonz.org>", b"To: <sip:john@jambonz.org@jambonz.org>"
    )
    request = parse_request(data)
    with pytest.raises(SipParseError):
        request.to_addr  # noqa: B018


# --- Via, CSeq, Contact, Expires --------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["UDP", "TCP", "TLS", "WS", "WSS", "SCTP", "udp"])
def test_via_transports(transport: str) -> None:
    via = parse_via(f"SIP/2.0/{transport} h.example:5060;branch=z9hG4bKx")
    assert via.transport == transport.upper() and via.protocol == "SIP/2.0"


def test_via_with_spaces_and_ipv6() -> None:
    via = parse_via("SIP / 2.0 / UDP [2001:db8::9]:5061 ; branch=z9hG4bK1 ; rport ; received=2001:db8::1")
    assert (via.host, via.port, via.branch, via.received, via.has_rport) == (
        "[2001:db8::9]",
        5061,
        "z9hG4bK1",
        "2001:db8::1",
        True,
    )
    assert str(via) == "SIP/2.0/UDP [2001:db8::9]:5061;branch=z9hG4bK1;rport;received=2001:db8::1"


@pytest.mark.parametrize("value", ["SIP/2.0/UDP", "SIP/2.0 UDP h", "SIP/2.0/UDP h:x", "SIP/2.0/U(P h", ""])
def test_bad_vias(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_via(value)


def test_received_and_rport_rfc3581() -> None:
    asked = parse_via("SIP/2.0/UDP 10.1.1.1:5060;rport;branch=z9hG4bK1")
    assert str(asked.with_source("192.0.2.1", 10001)) == (
        "SIP/2.0/UDP 10.1.1.1:5060;rport=10001;branch=z9hG4bK1;received=192.0.2.1"
    )
    same_host = parse_via("SIP/2.0/UDP 192.0.2.1:5060;rport;branch=z9hG4bK1").with_source("192.0.2.1", 5060)
    assert same_host.received == "192.0.2.1" and same_host.rport == 5060  # rport asked: received even if same
    plain = parse_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1")
    assert plain.with_source("192.0.2.1", 5060) == plain
    nat = plain.with_source("198.51.100.7", 4000)
    assert nat.received == "198.51.100.7" and not nat.has_rport
    v6 = parse_via("SIP/2.0/TCP [2001:db8::9];branch=z9hG4bK1").with_source("2001:db8::9", 1)
    assert v6.received is None


def test_top_via_can_be_rewritten_and_serialized() -> None:
    request = parse_request(samples.MESSAGE_WITH_BODY)
    request.top_via = request.top_via.with_source("192.0.2.200", 5060)
    wire = bytes(request)
    assert (
        b"Via: SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bK776sgd;received=192.0.2.200, "
        b"SIP/2.0/TCP 198.51.100.1:5070;branch=z9hG4bKa\r\nVia: SIP/2.0/UDP 192.0.2.55;branch=z9hG4bK99\r\n"
    ) in wire
    assert parse_request(wire).vias[0].received == "192.0.2.200"


@pytest.mark.parametrize(
    "value", ["REGISTER", "1", "x REGISTER", "1 REG ISTER", "2147483648 REGISTER", "-1 A"]
)
def test_bad_cseq(value: str) -> None:
    request = SipRequest("REGISTER", "sip:a", [("CSeq", value)])
    with pytest.raises(SipParseError):
        request.cseq  # noqa: B018


def test_contact_star_and_expires() -> None:
    request = SipRequest("REGISTER", "sip:a", [("Contact", "*"), ("Expires", "0")])
    assert request.contacts == "*" and request.expires == 0
    request.headers.add("Contact", "<sip:a@b>")
    with pytest.raises(SipParseError):
        request.contacts  # noqa: B018
    assert SipRequest("REGISTER", "sip:a").contacts == []
    assert SipRequest("REGISTER", "sip:a", [("Expires", "99999999999")]).expires == 2**32 - 1
    with pytest.raises(SipParseError):
        SipRequest("REGISTER", "sip:a", [("Expires", "soon")]).expires  # noqa: B018


def test_several_contacts_in_one_and_several_fields() -> None:
    request = SipRequest(
        "REGISTER",
        "sip:a",
        [("m", '"A, B" <sip:a@h1>;q=0.7, <sip:b@h2>;expires=60'), ("Contact", "sip:c@h3;q=0.1")],
    )
    contacts = request.contacts
    assert contacts != "*"
    assert [c.uri.host for c in contacts] == ["h1", "h2", "h3"]
    assert [c.params for c in contacts] == [{"q": "0.7"}, {"expires": "60"}, {"q": "0.1"}]
    assert contacts[0].display_name == "A, B"


# --- digest -----------------------------------------------------------------------------------------------


def test_strict_digest_parser() -> None:
    params = parse_digest_params('digest  Username="a\\"b", realm="x, y",NONCE=abc , qop="auth,auth-int"')
    assert params == {"username": 'a"b', "realm": "x, y", "nonce": "abc", "qop": "auth,auth-int"}


@pytest.mark.parametrize(
    "value",
    [
        "Basic dXNlcjpwYXNz",
        'Digest username="a", username="b"',
        'Digest username="a" realm="b"',
        'Digest username="unterminated',
        "Digest username",
        'Digest ="x"',
        "Digest nc=,",
    ],
)
def test_strict_digest_parser_rejects(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_digest_params(value)


def test_www_authenticate_is_jambonz_byte_for_byte() -> None:
    assert build_www_authenticate("jambonz.org", "157590482938000") == (
        'Digest realm="jambonz.org", algorithm=MD5, qop="auth", nonce="157590482938000"'
    )
    assert build_www_authenticate('we"ird', "n", opaque="o", stale=True) == (
        'Digest realm="we\\"ird", algorithm=MD5, qop="auth", nonce="n", opaque="o", stale=true'
    )


_FULL = 'Digest username="u", realm="r", nonce="n", uri="sip:r", response="x"'


@pytest.mark.parametrize(
    "header, expected",
    [
        # a field counts only after a comma or whitespace: cnonce is never read as nonce
        ('Digest cnonce="c1", username="u", realm="r", nonce="n", uri="sip:r", response="x"',
         {"nonce": "n", "cnonce": "c1"}),
        # ... and ';' is neither, so this username is not found
        ('Digest realm="r";username="u", nonce="n"', {"username": None, "realm": "r"}),
        # quotes are optional; the value ends at the next '"' or ','
        ("Digest username=john, realm=r, nonce=n, uri=sip:r, response=x, opaque=o", {"username": "john"}),
        ('Digest username="jo,hn", realm="r"', {"username": "jo"}),
        ('Digest username=jo"hn", realm="r"', {"username": "jo"}),
        ('Digest realm="r", username="", nonce="n"', {"username": ""}),
        # nc and qop have a fallback when last and unquoted
        (_FULL + ", qop=auth, nc=00000001", {"qop": "auth", "nc": "00000001"}),
        (_FULL + ", nc=00000001, qop=auth", {"qop": "auth", "nc": "00000001"}),
        (_FULL + ", nc=00000001 ", {"nc": "00000001 "}),
        # the fallback takes everything after the first "nc=" when nc is present but empty
        ('Digest nc="", cnonce="c", realm="r"', {"nc": '"", cnonce="c", realm="r"'}),
        # other fields are lost when last and unquoted; algorithm then defaults to MD5
        (_FULL + ", algorithm=SHA-256", {"algorithm": "MD5"}),
        (_FULL + ", opaque=abc", {"opaque": None}),
        (_FULL + ", cnonce=abc", {"cnonce": None}),
        (_FULL + ', algorithm="SHA-256"', {"algorithm": "SHA-256"}),
        ('Digest realm="r", response=x', {"response": None}),
        # the scheme is always "digest"
        ('Basic username="u"', {"scheme": "digest", "username": "u", "algorithm": "MD5"}),
    ],
)  # fmt: skip
def test_jambonz_digest_quirks(header: str, expected: dict[str, str | None]) -> None:
    fields = parse_digest_credentials_jambonz(header, require_mandatory=False)
    for name, value in expected.items():
        assert fields.get(name) == value, name
    assert fields["scheme"] == "digest"


def test_jambonz_digest_key_order() -> None:
    fields = parse_digest_credentials_jambonz(_FULL + ", nc=00000001")
    assert list(fields) == ["scheme", "username", "realm", "nonce", "uri", "response", "algorithm", "nc"]


@pytest.mark.parametrize("missing", ["username", "realm", "nonce", "uri", "response"])
def test_jambonz_digest_mandatory_fields(missing: str) -> None:
    header = _FULL.replace(f" {missing}=", f" x{missing}=")
    with pytest.raises(SipParseError, match=f"missing authorization component: {missing}"):
        parse_digest_credentials_jambonz(header)
    assert missing not in parse_digest_credentials_jambonz(header, require_mandatory=False)


# --- responses to requests --------------------------------------------------------------------------------


def test_make_response_copies_rfc3261_headers() -> None:
    request = parse_request(samples.MESSAGE_WITH_BODY)
    response = make_response(request, 200, to_tag="srv1", extra_headers=[("Expires", "30"), ("X-A", "1")])
    assert (response.status, response.reason, response.body) == (200, "OK", b"")
    assert response.headers.names() == ["Via", "Via", "From", "To", "Call-ID", "CSeq", "Expires", "X-A"]
    assert response.headers.get_all("via") == request.headers.get_all("via")
    assert response.headers.get("to") == "<sip:bob@jambonz.org>;tag=srv1"
    assert response.headers.get("from") == request.headers.get("from")
    assert response.cseq == request.cseq and response.call_id == request.call_id
    assert b"\r\nContent-Length: 0\r\n\r\n" in bytes(response)


def test_make_response_keeps_an_existing_to_tag_and_compact_names() -> None:
    request = parse_request(
        samples.SOFTPHONE_COMPACT_REGISTER.replace(b"t: <sip:alice@jambonz.org>", b"t: sip:a@b;tag=x")
    )
    response = make_response(request, 403, "Forbidden", {"X-Reason": "Invalid credentials"}, to_tag="new")
    assert response.headers.get("To") == "sip:a@b;tag=x"
    assert response.headers.names()[:4] == ["v", "f", "t", "i"]
    assert response.headers.get("x-reason") == "Invalid credentials"
    assert make_response(request, 503, "Max Devices Registered").reason == "Max Devices Registered"


def test_make_response_errors() -> None:
    request = parse_request(samples.SIPP_REGISTER)
    for status in (99, 700, 0):
        with pytest.raises(ValueError):
            make_response(request, status)
    with pytest.raises(ValueError):
        make_response(request, 200, to_tag="bad tag")
    with pytest.raises(ValueError):
        make_response(request, 403, extra_headers={"X-Reason": "a\r\nEvil: 1"})
    with pytest.raises(SipParseError):
        make_response(SipRequest("OPTIONS", "sip:a", [("Call-ID", "1")]), 400)


def test_make_response_tags_a_to_without_tag_even_if_it_does_not_parse() -> None:
    request = SipRequest("REGISTER", "sip:a", [("Via", "SIP/2.0/UDP h"), ("To", "<sip:a@b@c>")])
    assert make_response(request, 403, to_tag="t").headers.get("to") == "<sip:a@b@c>;tag=t"


def test_make_response_keeps_an_existing_tag_and_copies_an_unparseable_tagged_to() -> None:
    tagged = SipRequest("REGISTER", "sip:a", [("Via", "SIP/2.0/UDP h"), ("To", "<sip:a@b>;tag=x")])
    assert make_response(tagged, 200, to_tag="t").headers.get("to") == "<sip:a@b>;tag=x"
    odd = SipRequest("REGISTER", "sip:a", [("Via", "SIP/2.0/UDP h"), ("To", "<sip:a@b@c>;tag=x")])
    assert make_response(odd, 400, to_tag="t").headers.get("to") == "<sip:a@b@c>;tag=x"


# --- stream framing ---------------------------------------------------------------------------------------


def test_stream_framer_cuts_messages_and_reports_pings() -> None:
    stream = b"\r\n\r\n" + samples.MESSAGE_WITH_BODY + b"\r\n" + samples.SIPP_REGISTER + b"\r\n\r\n"
    framer = StreamFramer()
    assert framer.feed(stream) == [
        KEEPALIVE_PING,
        samples.MESSAGE_WITH_BODY,
        samples.SIPP_REGISTER,
        KEEPALIVE_PING,
    ]
    assert framer.buffered_bytes == 0


def test_stream_framer_byte_by_byte() -> None:
    stream = samples.MESSAGE_WITH_BODY + b"\r\n\r\n" + samples.UNAUTHORIZED_401
    framer = StreamFramer()
    frames = [frame for byte in stream for frame in framer.feed(bytes([byte]))]
    assert frames == [samples.MESSAGE_WITH_BODY, KEEPALIVE_PING, samples.UNAUTHORIZED_401]
    assert [type(parse_message(f)) for f in frames if isinstance(f, bytes)] == [SipRequest, SipResponse]


def test_stream_framer_waits_for_the_body_and_lf_only_heads() -> None:
    lf_only = samples.MESSAGE_WITH_BODY.replace(b"\r\n", b"\n")
    framer = StreamFramer()
    assert framer.feed(lf_only[:-5]) == []
    assert framer.feed(lf_only[-5:] + lf_only[:10]) == [lf_only]
    assert framer.buffered_bytes == 10


@pytest.mark.parametrize(
    "stream, error",
    [
        (samples.MESSAGE_WITH_BODY.replace(b"Content-Length: 18\r\n", b""), "no Content-Length"),
        (samples.MESSAGE_WITH_BODY.replace(b"c: text/plain", b"l: 5"), "conflicting"),
        (samples.MESSAGE_WITH_BODY.replace(b"Content-Length: 18", b"Content-Length: x"), "not a number"),
        (samples.MESSAGE_WITH_BODY.replace(b"Content-Length: 18", b"Content-Length: 99999"), "larger than"),
        (b"REGISTER sip:a SIP/2.0\r\n" + b"X-Pad: " + b"y" * 70000, "larger than"),
    ],
)
def test_stream_framer_errors_break_the_stream(stream: bytes, error: str) -> None:
    framer = StreamFramer()
    with pytest.raises(SipParseError, match=error):
        framer.feed(stream)
    with pytest.raises(SipParseError):
        framer.feed(samples.SIPP_REGISTER)


def test_stream_framer_compact_content_length_and_max_size() -> None:
    framer = StreamFramer(max_message_bytes=len(samples.SOFTPHONE_COMPACT_REGISTER))
    assert framer.feed(samples.SOFTPHONE_COMPACT_REGISTER) == [samples.SOFTPHONE_COMPACT_REGISTER]
    with pytest.raises(SipParseError):
        StreamFramer(max_message_bytes=100).feed(samples.SOFTPHONE_COMPACT_REGISTER)


def test_stream_framer_returns_malformed_but_delimited_frames() -> None:
    junk = b"NOT SIP AT ALL\r\nContent-Length: 3\r\n\r\nabc"
    framer = StreamFramer()
    frames = framer.feed(junk + samples.SIPP_REGISTER)
    assert frames == [junk, samples.SIPP_REGISTER]
    with pytest.raises(SipParseError):
        parse_message(junk)


def test_uri_model_equality_and_str() -> None:
    uri = SipUri("sip", "[2001:db8::1]", user="alice", port=5070, params={"transport": "tcp", "lr": None})
    assert str(uri) == "sip:alice@[2001:db8::1]:5070;transport=tcp;lr"
    assert parse_uri(str(uri)) == uri
    assert Via("TLS", "h", 5061, {"branch": "z9hG4bK1"}) == parse_via("SIP/2.0/TLS h:5061;branch=z9hG4bK1")
