"""SIP requests to request events (ingest/requests.py): what a processor gets, and the 400s."""

from __future__ import annotations

import pytest

from events import RegisterReceived
from ingest.fronts.front import TransportFacts
from ingest.requests import BadRequest, is_heartbeat, options_received, register_received
from ingest.sip import SipRequest, parse_message

FACTS = TransportFacts("203.0.113.9", 5062, "udp", "udp/198.51.100.1:5060,tcp/198.51.100.1:5060", "10.0.0.5:5060")


def request(text: str) -> SipRequest:
    message = parse_message(text.replace("\n", "\r\n").encode())
    assert isinstance(message, SipRequest)
    return message


AUTHORIZATION = (
    'Digest username="john", realm="jambonz.org", nonce="abc", uri="sip:jambonz.org", response="ff", '
    'qop=auth, nc=00000001, cnonce="c1"'
)
REGISTER = """REGISTER sip:jambonz.org SIP/2.0
v: SIP/2.0/UDP 192.168.1.20:5062;branch=z9hG4bK776;rport
f: <sip:john@jambonz.org>;tag=a1
t: "John" <sip:john@jambonz.org:5060>
i: reg-1
CSeq: 2 REGISTER
m: <sip:john@[2001:db8::20]:5062;transport=udp>;expires=120;+sip.instance="<urn:uuid:1>"
Expires: 3600
Authorization: {auth}
User-Agent: Softphone/1.0
l: 0

""".replace("{auth}", AUTHORIZATION)


def test_register_fields_for_the_registrar() -> None:
    event = register_received(request(REGISTER), FACTS, "ingest-1")
    assert isinstance(event, RegisterReceived)
    assert (event.reply_to, event.call_id, event.cseq) == ("ingest-1", "reg-1", 2)
    assert (event.source_ip, event.source_port, event.transport, event.via_transport) == (
        "203.0.113.9",
        5062,
        "udp",
        "udp",
    )
    assert event.sbc_address == FACTS.sbc_address and event.private_sbc_address == "10.0.0.5:5060"
    assert (event.request_uri, event.request_uri_host) == ("sip:jambonz.org", "jambonz.org")
    assert (event.aor_user, event.aor_host, event.to_uri) == ("john", "jambonz.org", "sip:john@jambonz.org:5060")
    assert event.contact_uri == "sip:john@[2001:db8::20]:5062;transport=udp"
    assert event.contact is not None and event.contact.endswith('+sip.instance="<urn:uuid:1>"')
    assert event.expires == 120  # the Contact parameter wins over the Expires header
    assert event.authorization is not None and event.authorization.username == "john"
    assert event.authorization.response == "ff" and event.authorization.cnonce == "c1"
    assert event.user_agent == "Softphone/1.0"


def test_no_credentials_header_reaches_the_stream_and_compact_names_are_spelled_out() -> None:
    event = register_received(request(REGISTER), FACTS, "ingest-1")
    assert isinstance(event, RegisterReceived)
    assert "authorization" not in event.headers
    assert event.headers["via"].startswith("SIP/2.0/UDP 192.168.1.20:5062")
    assert event.headers["call-id"] == "reg-1" and event.headers["contact"].startswith("<sip:john@")


def test_contact_star_takes_the_expires_header() -> None:
    text = REGISTER.replace(
        'm: <sip:john@[2001:db8::20]:5062;transport=udp>;expires=120;+sip.instance="<urn:uuid:1>"', "Contact: *"
    ).replace("Expires: 3600", "Expires: 0")
    event = register_received(request(text), FACTS, "ingest-1")
    assert isinstance(event, RegisterReceived)
    assert (event.contact, event.contact_uri, event.expires) == ("*", "*", 0)


def test_missing_expires_is_left_to_the_registrar() -> None:
    text = REGISTER.replace(";expires=120", "").replace("Expires: 3600\n", "")
    event = register_received(request(text), FACTS, "ingest-1")
    assert isinstance(event, RegisterReceived) and event.expires is None


def test_unparseable_to_is_left_to_the_registrar() -> None:
    text = REGISTER.replace('t: "John" <sip:john@jambonz.org:5060>', "t: <sip:john@jambonz.org@jambonz.org>")
    event = register_received(request(text), FACTS, "ingest-1")
    assert isinstance(event, RegisterReceived)
    assert event.aor_host is None and event.to_uri == "<sip:john@jambonz.org@jambonz.org>"


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("Expires: 3600", "Expires: soon", "Invalid Expires header"),
        (";expires=120", ";expires=abc", "Invalid expires parameter in Contact header"),
        ("i: reg-1\n", "", "Missing Call-ID header"),
        ("CSeq: 2 REGISTER", "CSeq: two REGISTER", "Invalid CSeq or Via header"),
    ],
)
def test_rule_breaking_registers_get_a_400_reason(old: str, new: str, reason: str) -> None:
    text = REGISTER.replace(old, new)
    if old == "Expires: 3600":
        text = text.replace(";expires=120", "")
    result = register_received(request(text), FACTS, "ingest-1")
    assert isinstance(result, BadRequest)
    assert result.reason.startswith(reason)


def test_heartbeat_options() -> None:
    text = (
        "OPTIONS sip:10.0.0.5 SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.20:5060;branch=z9hG4bK1\nFrom: <sip:fs@x>;tag=1\n"
        "To: <sip:10.0.0.5>\nCall-ID: o1\nCSeq: 1 OPTIONS\nX-FS-Status: open\nX-FS-ServiceUrl: http://10.0.0.20:3000\n"
        "Content-Length: 0\n\n"
    )
    message = request(text)
    assert is_heartbeat(message)
    event = options_received(message, FACTS, "ingest-1")
    assert (event.fs_status, event.fs_service_url, event.rtp_status) == ("open", "http://10.0.0.20:3000", None)
    plain = request(text.replace("X-FS-Status: open\n", "").replace("X-FS-ServiceUrl: http://10.0.0.20:3000\n", ""))
    assert not is_heartbeat(plain)


async def test_a_cancelled_request_leaves_no_waiter_behind() -> None:
    """A stop's drain cancels requests still waiting for a decision; their waiters must go with them."""
    import asyncio

    from ingest.fronts.front import TransportFacts
    from ingest.replies import ReplyRouter
    from ingest.service import Ingest
    from ingest.sip import parse_message
    from tests.unit import sip_samples as samples

    class SilentAppender:
        """Takes every append and never fails it: the decision simply never comes."""

        def submit(self, stream: str, event: object, waiter: object) -> None:
            pass

    class Request:
        message = parse_message(samples.SIPP_REGISTER)
        facts = TransportFacts("10.0.0.9", 5062, "udp", "10.0.0.1:5060")

        async def respond(self, *answer: object) -> None:
            raise AssertionError("a cancelled request is not answered")

    replies = ReplyRouter(None, None, None, "replies:i1")  # type: ignore[arg-type]  # only its waiters are used
    ingest = Ingest(SilentAppender(), replies, "requests", "i1", reply_timeout_s=30)  # type: ignore[arg-type]
    task = asyncio.create_task(ingest(Request()))  # type: ignore[arg-type]
    for _ in range(3):
        await asyncio.sleep(0)
    assert replies.waiting == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert replies.waiting == 0
