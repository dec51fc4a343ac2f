"""drachtio frames, leader messages and the SIP text inside: byte counts, split/joined frames, size limit."""

from __future__ import annotations

import pytest

from ingest.fronts.drachtio.framing import (
    MAX_OUTGOING_FRAME_BYTES,
    FrameDecoder,
    FrameFormatError,
    FrameTooLargeError,
    encode_frame,
)
from ingest.fronts.drachtio.messages import (
    CommandReply,
    MessageFormatError,
    OtherMessage,
    SipDelivery,
    authenticate_payload,
    join_payload,
    parse_server_message,
    ping_payload,
    request_payload,
    response_payload,
    route_payload,
    server_version_at_least,
    split_payload,
)
from ingest.fronts.drachtio.render import render_request, render_response, salvage_response, timeout_response
from ingest.fronts.front import OutboundRequest
from ingest.sip import SipRequest, parse_message

# DRACHTIO.md 14.1 and 14.2, byte for byte.
AUTH_FRAME = b"56#0b6d1e0a-6c0e-4a53-9d0a-2f7e8c1b9a01|authenticate|cymru|"
AUTH_OK_FRAME = (
    b"181#5f0c2f8e-3d41-4b7a-8c55-0e1d2a3b4c5d|response|0b6d1e0a-6c0e-4a53-9d0a-2f7e8c1b9a01|OK|"
    b"udp/198.51.100.7:5060,tcp/198.51.100.7:5060|v0.9.10|udp/198.51.100.7:5060,tcp/198.51.100.7:5060"
)
ROUTE_FRAME = b"51#3c9a7d44-1e2f-4a3b-8c4d-5e6f7a8b9c0d|route|register"
PING_FRAME = b"41#9e8d7c6b-5a49-4837-a261-50f4e3d2c1b0|ping"
PONG_FRAME = b"90#1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9|response|9e8d7c6b-5a49-4837-a261-50f4e3d2c1b0|OK|pong"

REGISTER_SIP = (
    b"REGISTER sip:198.51.100.7 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.44:5062;branch=z9hG4bK-524287-1;rport=5062\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@example.com>;tag=a73kszlfl\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b"Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.44\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Contact: <sip:alice@192.0.2.44:5062;transport=udp>\r\n"
    b"Expires: 3600\r\n"
    b"User-Agent: ExamplePhone/1.0\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
# DRACHTIO.md 14.3
REGISTER_FRAME = (
    b"517#d41d8cd9-8f00-4b20-9e98-00998ecf8427|sip|network|370|udp|192.0.2.44|5062|14:03:27.512034|"
    b"6f1d2c3b-4a59-4687-b7a6-c5d4e3f20100||198.51.100.7|5060|\r\n" + REGISTER_SIP
)


def test_examples_of_the_doc_encode_to_the_same_bytes() -> None:
    for frame in (AUTH_FRAME, AUTH_OK_FRAME, ROUTE_FRAME, PING_FRAME, PONG_FRAME, REGISTER_FRAME):
        payload = frame.partition(b"#")[2]
        assert encode_frame(payload) == frame


def test_built_payloads_match_the_doc() -> None:
    assert authenticate_payload("0b6d1e0a-6c0e-4a53-9d0a-2f7e8c1b9a01", "cymru") == AUTH_FRAME[3:]
    assert route_payload("3c9a7d44-1e2f-4a3b-8c4d-5e6f7a8b9c0d", "REGISTER") == ROUTE_FRAME[3:]
    assert ping_payload("9e8d7c6b-5a49-4837-a261-50f4e3d2c1b0") == PING_FRAME[3:]
    assert authenticate_payload("x", "s", ("a", "b")) == b"x|authenticate|s|a,b"


def test_sip_payload_leaders() -> None:
    sip = b"SIP/2.0 200 OK\r\n\r\n"
    assert response_payload("m", "t-1", sip) == b"m|sip|t-1|\r\n" + sip
    assert request_payload("m", b"OPTIONS sip:x SIP/2.0\r\n\r\n") == b"m|sip||\r\nOPTIONS sip:x SIP/2.0\r\n\r\n"
    assert request_payload("m", b"R", "sip:203.0.113.10:5060") == b"m|sip|||sip:203.0.113.10:5060\r\nR"
    with pytest.raises(ValueError, match="transaction id"):
        response_payload("m", "", sip)


def test_leader_fields_refuse_separators_without_echoing_the_value() -> None:
    with pytest.raises(ValueError) as caught:
        authenticate_payload("m", "top|secret")
    assert "top|secret" not in str(caught.value)
    with pytest.raises(ValueError):
        join_payload(("m", "route", "register\r\n"))


def test_decoder_handles_one_byte_at_a_time_including_inside_the_digits() -> None:
    decoder = FrameDecoder()
    stream = REGISTER_FRAME + AUTH_OK_FRAME
    payloads: list[bytes] = []
    for index in range(len(stream)):
        payloads += decoder.feed(stream[index : index + 1])
    assert payloads == [REGISTER_FRAME.partition(b"#")[2], AUTH_OK_FRAME.partition(b"#")[2]]
    assert decoder.buffered_bytes == 0


def test_decoder_split_between_length_digits() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"5") == []
    assert decoder.feed(b"1#3c9a7d44-1e2f-4a3b-8c4d-5e6f7a8b9c0d|route|regi") == []
    assert decoder.feed(b"ster4") == [ROUTE_FRAME[3:]]
    assert decoder.feed(b"1#9e8d7c6b-5a49-4837-a261-50f4e3d2c1b0|ping") == [PING_FRAME[3:]]


def test_decoder_returns_joined_frames_in_order() -> None:
    decoder = FrameDecoder()
    joined = AUTH_OK_FRAME + ROUTE_FRAME + PING_FRAME + PONG_FRAME
    assert decoder.feed(joined) == [f.partition(b"#")[2] for f in (AUTH_OK_FRAME, ROUTE_FRAME, PING_FRAME, PONG_FRAME)]


def test_lengths_count_utf8_bytes_not_characters() -> None:
    body = "Grüße, 東京 🎉".encode()
    payload = b"id|sip|network|" + str(len(body)).encode() + b"\r\n" + body
    frame = encode_frame(payload)
    assert frame.startswith(str(len(payload)).encode() + b"#")
    assert len(payload) > len(payload.decode())  # the test really has multi-byte characters
    decoder = FrameDecoder()
    # split in the middle of a multi-byte character
    cut = frame.index("東".encode()) + 1
    assert decoder.feed(frame[:cut]) == []
    assert decoder.feed(frame[cut:]) == [payload]


def test_incoming_frames_may_be_any_length() -> None:
    payload = b"id|sip|network|x\r\n" + b"a" * 200_000
    assert FrameDecoder().feed(b"%d#%b" % (len(payload), payload)) == [payload]


def test_empty_payload_is_a_frame() -> None:
    assert FrameDecoder().feed(b"0#41#9e8d7c6b-5a49-4837-a261-50f4e3d2c1b0|ping") == [b"", PING_FRAME[3:]]


@pytest.mark.parametrize("garbage", [b"#abc", b"12a#xyz", b"-5#", b" 5#hello", b"12345678901#"])
def test_bad_length_prefix_raises(garbage: bytes) -> None:
    with pytest.raises(FrameFormatError):
        FrameDecoder().feed(garbage)


def test_a_frame_cut_short_keeps_the_frames_before_it_and_drops_itself() -> None:
    """drachtio wrote 11 bytes of a frame, then the next frames: the cut one's length swallows their start."""
    whole = [REGISTER_FRAME, PING_FRAME, REGISTER_FRAME]
    stream = b"".join(whole) + REGISTER_FRAME[:11] + REGISTER_FRAME + REGISTER_FRAME
    with pytest.raises(FrameFormatError, match="bad drachtio length prefix") as caught:
        FrameDecoder().feed(stream)
    assert caught.value.intact == [frame.split(b"#", 1)[1] for frame in whole]
    assert caught.value.discarded  # the cut frame's "payload": its first 7 bytes and most of the next frame


def test_frames_of_an_earlier_feed_are_not_taken_back() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(PING_FRAME) == [PING_FRAME[3:]]
    with pytest.raises(FrameFormatError) as caught:
        decoder.feed(b"xyz#")
    assert caught.value.intact == [] and not caught.value.discarded


def test_endless_digits_without_hash_raise() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"123456") == []
    with pytest.raises(FrameFormatError):
        decoder.feed(b"7890123")


def test_oversized_outgoing_frame_is_refused() -> None:
    limit_payload = MAX_OUTGOING_FRAME_BYTES - len(b"%d#" % (MAX_OUTGOING_FRAME_BYTES - 6))
    assert len(encode_frame(b"x" * limit_payload)) == MAX_OUTGOING_FRAME_BYTES
    with pytest.raises(FrameTooLargeError) as caught:
        encode_frame(b"x" * (limit_payload + 1))
    assert caught.value.frame_bytes == MAX_OUTGOING_FRAME_BYTES + 1
    assert "12,228" in str(caught.value)
    # the limit counts bytes: 4,000 three-byte characters are 12,000 bytes of payload
    with pytest.raises(FrameTooLargeError):
        encode_frame(("€" * 4000).encode())


def test_split_payload_keeps_empty_fields_and_splits_at_the_first_crlf() -> None:
    fields, sip = split_payload(REGISTER_FRAME.partition(b"#")[2])
    assert len(fields) == 13
    assert fields[9] == "" and fields[12] == ""
    assert sip == REGISTER_SIP
    assert split_payload(b"a|response|b|OK||") == (("a", "response", "b", "OK", "", ""), None)


def test_parse_incoming_register_delivery() -> None:
    message = parse_server_message(REGISTER_FRAME.partition(b"#")[2])
    assert message == SipDelivery(
        source="network",
        protocol="udp",
        source_address="192.0.2.44",
        source_port=5062,
        transaction_id="6f1d2c3b-4a59-4687-b7a6-c5d4e3f20100",
        dialog_id="",
        received_on="198.51.100.7:5060",
        sip=REGISTER_SIP,
    )
    assert not message.is_response
    assert int(split_payload(REGISTER_FRAME.partition(b"#")[2])[0][3]) == len(REGISTER_SIP)


def test_parse_response_delivery_without_received_on_and_stack_made_408() -> None:
    payload = b"i|sip|network|0||||14:05:42.000001|t-9||\r\nSIP/2.0 408 Request Timeout\r\n\r\n"
    message = parse_server_message(payload)
    assert isinstance(message, SipDelivery)
    assert message.is_response and message.received_on is None
    assert (message.source_address, message.source_port, message.protocol) == ("", 5060, "")


def test_parse_command_replies() -> None:
    reply = parse_server_message(AUTH_OK_FRAME.partition(b"#")[2])
    assert isinstance(reply, CommandReply)
    assert reply.ok and reply.request_id == "0b6d1e0a-6c0e-4a53-9d0a-2f7e8c1b9a01"
    assert reply.field(4) == "udp/198.51.100.7:5060,tcp/198.51.100.7:5060"
    assert reply.field(5) == "v0.9.10" and reply.field(9) == ""
    nok = parse_server_message(
        b"5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d|response|decafbad-2222-4333-8444-555566667777|NOK|"
        b"Response not sent due to unknown transaction"
    )
    assert isinstance(nok, CommandReply)
    assert not nok.ok and nok.reason == "Response not sent due to unknown transaction"


def test_parse_other_and_malformed_messages() -> None:
    cdr = parse_server_message(b"i|cdr:attempt|network|06:57:01.448456\r\nINVITE sip:x SIP/2.0\r\n\r\n")
    assert isinstance(cdr, OtherMessage) and cdr.kind == "cdr:attempt"
    for bad in (
        b"lonely",
        b"i|response|x",
        b"i|sip|network|1|udp|1.2.3.4|5060|t|txn",
        b"i|sip|n|1|udp|a|50x0|t|x||\r\n",
    ):
        with pytest.raises(MessageFormatError):
            parse_server_message(bad)
    with pytest.raises(MessageFormatError):
        parse_server_message(b"\xff\xfe|sip")


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("v0.9.10-1-g9c2dd4cb6a", True),
        ("v0.8.2", True),
        ("v0.8.1", False),
        ("v1.0.0", True),
        ("", False),
        ("x", False),
    ],
)
def test_server_version_at_least(version: str, expected: bool) -> None:
    assert server_version_at_least(version, (0, 8, 2)) is expected


# -- the SIP text inside `sip` frames (DRACHTIO.md 6 and 7) ---------------------------------------


def test_response_text_copies_dialog_headers_and_leaves_the_rest_to_drachtio() -> None:
    request = parse_message(REGISTER_SIP.replace(b"From:", b"f:").replace(b"Call-ID:", b"i:"))
    assert isinstance(request, SipRequest)
    text = render_response(
        request,
        200,
        "",
        [
            ("Via", "SIP/2.0/UDP 6.6.6.6"),
            ("Record-Route", "<sip:x>"),
            ("RSeq", "1"),
            ("Content-Length", "99"),
            ("m", "<sip:alice@192.0.2.44:5062>;expires=30"),
            ("To", "<sip:alice@example.com>;tag=mine"),
            ("X-Custom", "kept"),
        ],
        b"",
    )
    assert text == (
        b"SIP/2.0 200 OK\r\n"
        b"Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.44\r\n"
        b"CSeq: 1 REGISTER\r\n"
        b"From: <sip:alice@example.com>;tag=a73kszlfl\r\n"
        b"To: <sip:alice@example.com>;tag=mine\r\n"
        b"Contact: <sip:alice@192.0.2.44:5062>;expires=30\r\n"
        b"X-Custom: kept\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )


def test_response_text_refuses_what_drachtio_cannot_take() -> None:
    request = parse_message(REGISTER_SIP)
    assert isinstance(request, SipRequest)
    with pytest.raises(ValueError):
        render_response(request, 200, "OK", [("X-Bad", "a\r\nInjected: 1")])
    with pytest.raises(ValueError):
        render_response(request, 200, "OK", [("Bad Name", "v")])
    with pytest.raises(ValueError):
        render_response(request, 700, "Nope")
    with pytest.raises(ValueError):
        render_response(request, 200, "OK\r\nX: y")


def test_salvaged_response_keeps_what_it_can_read() -> None:
    raw = b"REGISTER sip:x SIP/2.0\r\nCSeq: 9 REGISTER\r\nt: <sip:b@x>\r\n\x00junk\r\n\r\n"
    assert salvage_response(raw, 400, "Bad Request") == (
        b"SIP/2.0 400 Bad Request\r\nCSeq: 9 REGISTER\r\nTo: <sip:b@x>\r\nContent-Length: 0\r\n\r\n"
    )
    assert salvage_response(b"\xff\xfe", 400, "Bad Request") == (
        b"SIP/2.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    )


def test_request_text_and_timeout_response() -> None:
    request = OutboundRequest(
        "options",
        "sip:203.0.113.10:5060;transport=tcp",
        headers=[("Via", "SIP/2.0/UDP x"), ("i", "c-1"), ("Content-Length", "5"), ("X-Probe", "1")],
    )
    assert render_request(request) == (
        b"OPTIONS sip:203.0.113.10:5060;transport=tcp SIP/2.0\r\nCall-ID: c-1\r\nX-Probe: 1\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    timeout = timeout_response(request)
    assert (timeout.status, timeout.reason, timeout.call_id) == (408, "Request Timeout", "c-1")
    with pytest.raises(ValueError):
        render_request(OutboundRequest("OPTIONS", "sip:a b"))
    with pytest.raises(ValueError):
        render_request(OutboundRequest("OPT IONS", "sip:a"))
