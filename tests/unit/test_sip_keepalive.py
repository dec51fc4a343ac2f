"""The plain OPTIONS fast path (ingest/sip/keepalive.py) sends exactly what the full dispatcher path sends.

Each case goes through two real Dispatchers serving the same Ingest: one whose handler offers
`answer_keepalive` (the fast path may answer) and one whose handler does not (always the full path). The
bytes sent, the front's stats and the Ingest's stats must be equal, and the fast function's verdict (an
answer or None) must be the expected one. No transaction table is passed, so the answers that need a
decision (heartbeats) also carry the deterministic stateless To tag and can be compared byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import Event
from ingest.fronts.front import IncomingRequest
from ingest.fronts.native.dispatch import _TAG_KEY, Dispatcher, FrontStats
from ingest.fronts.native.transactions import TransactionTable
from ingest.fronts.native.udp import UdpListener
from ingest.service import Ingest, IngestStats
from ingest.sip import DEFAULT_MAX_MESSAGE_BYTES
from ingest.sip.keepalive import answer_plain_options

SIPP = ("127.0.0.1", 5061)
PHONE = ("203.0.113.9", 40312)
SIPP_VIA = "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-12345-1-0"
TAIL = (
    "From: sipp <sip:sipp@127.0.0.1:5061>;tag=12345SIPpTag001",
    "To: sut <sip:service@127.0.0.1:5080>",
    "Call-ID: 1-12345@127.0.0.1",
    "CSeq: 1 OPTIONS",
)


def message(*lines: str, start: str = "OPTIONS sip:127.0.0.1:5080 SIP/2.0", body: str = "") -> bytes:
    return "\r\n".join((start, *lines, "", body)).encode()


def options(via: str = SIPP_VIA, *extra: str) -> bytes:
    return message(via, *TAIL, *extra, "Content-Length: 0")


SIPP_OPTIONS = message(
    SIPP_VIA,
    *TAIL,
    "Contact: sip:sipp@127.0.0.1:5061",
    "Max-Forwards: 70",
    "Subject: Performance Test",
    "Content-Length: 0",
)


class DecidingIngest(Ingest):
    """The real Ingest without its event log: a request that needs a decision is answered 202 at once."""

    def __init__(self) -> None:
        no_store = None  # never reached: `_decide` is replaced
        super().__init__(no_store, no_store, "requests", "i1", reply_timeout_s=1)  # type: ignore[arg-type]
        self.decided: list[str] = []

    async def _decide(self, request: IncomingRequest, event: Event) -> None:
        self.decided.append(event.TYPE)
        await request.respond(202, "Decided")


class FullPathOnly:
    """The same Ingest behind a handler that does not offer `answer_keepalive`."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    def answer_now(self, request: IncomingRequest) -> bool:
        return self.ingest.answer_now(request)

    async def __call__(self, request: IncomingRequest) -> None:
        await self.ingest(request)


def dispatcher_for(ingest: Ingest, *, fast: bool) -> Dispatcher:
    """A real Dispatcher serving `ingest`; with `fast` False it never takes the fast path."""
    dispatcher = Dispatcher(DEFAULT_MAX_MESSAGE_BYTES, lambda response: None)
    dispatcher.handler = ingest if fast else FullPathOnly(ingest)
    return dispatcher


@dataclass
class Outcome:
    sent: list[bytes]
    front: FrontStats
    ingest: IngestStats
    decided: list[str]


def exchange(data: bytes, source: tuple[str, int], *, fast: bool) -> tuple[Dispatcher, Outcome]:
    ingest = DecidingIngest()
    dispatcher = dispatcher_for(ingest, fast=fast)
    sent: list[bytes] = []
    dispatcher.receive(data, "udp", source, sent.append, None)
    return dispatcher, Outcome(sent, dispatcher.stats, ingest.stats, ingest.decided)


async def through(data: bytes, source: tuple[str, int], *, fast: bool) -> Outcome:
    dispatcher, outcome = exchange(data, source, fast=fast)
    await dispatcher.drain(1.0)  # lets an answer that needed a decision go out
    return outcome


TAKEN: dict[str, tuple[bytes, tuple[str, int]]] = {
    "sipp": (SIPP_OPTIONS, SIPP),
    "no content-length": (message(SIPP_VIA, *TAIL), SIPP),
    "compact names": (
        message(
            "v: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1",
            "f: <sip:a@example.com>;tag=1",
            "t: <sip:b@example.com>",
            "i: abc",
            "CSeq: 7 OPTIONS",
            "l: 0",
        ),
        SIPP,
    ),
    "mixed-case names": (
        message(
            "VIA: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-2",
            "fROM: <sip:a@example.com>;tag=1",
            "tO: <sip:b@example.com>",
            "call-id: abc",
            "cseq: 8 OPTIONS",
            "CONTENT-LENGTH: 0",
        ),
        SIPP,
    ),
    "blanks around names and values": (
        message(
            "Via :\t SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-3  ",
            "From:<sip:a@example.com>;tag=1",
            "To:   <sip:b@example.com>\t",
            "Call-ID \t: abc",
            "CSeq: 9 OPTIONS ",
            "Content-Length:  0 ",
        ),
        SIPP,
    ),
    "several Via fields": (
        options(
            "Via: SIP/2.0/UDP 10.1.2.3:5060;branch=z9hG4bK-top",
            "Via: SIP/2.0/TCP proxy.example.com;branch=z9hG4bK-p;received=198.51.100.7",
            "v: SIP/2.0/UDP   oddly spelled ; BRANCH = x , SIP/2.0/UDP second",
        ),
        PHONE,
    ),
    "host differs: received added": (options("Via: SIP/2.0/UDP 192.168.1.20:5062;branch=z9hG4bK776"), PHONE),
    "rport flag": (options("Via: SIP/2.0/UDP 192.168.1.20:5062;branch=z9hG4bK776;rport"), PHONE),
    "rport flag first, host equal": (options("Via: SIP/2.0/UDP 203.0.113.9:5062;rport;branch=z9hG4bK1"), PHONE),
    "only an rport flag, host equal": (options("Via: SIP/2.0/UDP 203.0.113.9:5062;rport"), PHONE),
    "rport with a value": (options("Via: SIP/2.0/UDP 192.168.1.20:5062;branch=z9hG4bK776;rport=5062"), PHONE),
    "received equal to the source": (
        options("Via: SIP/2.0/UDP 192.168.1.20:5062;received=203.0.113.9;branch=z9hG4bK776"),
        PHONE,
    ),
    "received different from the source": (
        options("Via: SIP/2.0/UDP 192.168.1.20:5062;received=198.51.100.1;branch=z9hG4bK776;rport"),
        PHONE,
    ),
    "received but host equal": (
        options("Via: SIP/2.0/UDP 203.0.113.9:5062;received=198.51.100.1;branch=z9hG4bK776"),
        PHONE,
    ),
    "domain host, no port, flag param": (
        options("Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKx;rport;alias"),
        PHONE,
    ),
    "no Via params": (options("Via: SIP/2.0/UDP 127.0.0.1:5061"), SIPP),
    "IPv6 source": (options("Via: SIP/2.0/UDP 192.168.1.20:5062;branch=z9hG4bK9;rport"), ("2001:db8::9", 5062)),
    "Timestamp echoed": (options(SIPP_VIA, "Timestamp: 54.07 0.5", "timestamp: 2"), SIPP),
    "unknown and empty headers": (
        options(SIPP_VIA, "X-Custom: a, b", "Subject:", "Allow: INVITE, OPTIONS", "k: path", "Accept: */*"),
        SIPP,
    ),
    "To without tag, with params": (
        message(SIPP_VIA, TAIL[0], 'To: "Bob Tagless" <sip:bob@example.com>;foo=bar', *TAIL[2:]),
        SIPP,
    ),
    "two From fields": (options(SIPP_VIA, "From: <sip:other@example.com>;tag=2"), SIPP),
    "largest CSeq": (message(SIPP_VIA, *TAIL[:3], "CSeq: 2147483647 OPTIONS"), SIPP),
    "Request-URI with params": (
        message(SIPP_VIA, *TAIL, start="OPTIONS sip:sbc.example.com;transport=udp SIP/2.0"),
        SIPP,
    ),
    "200 headers": (options(SIPP_VIA, *(f"X-H{n}: {n}" for n in range(194))), SIPP),
}

LEFT: dict[str, tuple[bytes, tuple[str, int]]] = {
    "To with a tag": (message(SIPP_VIA, *TAIL[:1], "To: <sip:b@example.com>;tag=x1", *TAIL[2:]), SIPP),
    "To with an upper-case tag": (message(SIPP_VIA, *TAIL[:1], "To: <sip:b@example.com>;TAG=x1", *TAIL[2:]), SIPP),
    "feature server heartbeat": (options(SIPP_VIA, "X-FS-Status: open", "X-FS-Calls: 3"), SIPP),
    "rtp server heartbeat": (options(SIPP_VIA, "x-rtp-status: open"), SIPP),
    "body": (message(SIPP_VIA, *TAIL, "Content-Length: 4", body="ping"), SIPP),
    "body without Content-Length": (message(SIPP_VIA, *TAIL, body="ping"), SIPP),
    "Content-Length 00": (message(SIPP_VIA, *TAIL, "Content-Length: 00"), SIPP),
    "Content-Length longer than the body": (message(SIPP_VIA, *TAIL, "Content-Length: 9", body="ping"), SIPP),
    "bytes after Content-Length 0": (message(SIPP_VIA, *TAIL, "Content-Length: 0", body="x"), SIPP),
    "CSeq of another method": (message(SIPP_VIA, *TAIL[:3], "CSeq: 1 REGISTER"), SIPP),
    "CSeq not a number": (message(SIPP_VIA, *TAIL[:3], "CSeq: x OPTIONS"), SIPP),
    "CSeq too large": (message(SIPP_VIA, *TAIL[:3], "CSeq: 2147483648 OPTIONS"), SIPP),
    "CSeq method in lower case": (message(SIPP_VIA, *TAIL[:3], "CSeq: 1 options"), SIPP),
    "CSeq with two spaces": (message(SIPP_VIA, *TAIL[:3], "CSeq: 1  OPTIONS"), SIPP),
    "no Call-ID": (message(SIPP_VIA, *TAIL[:2], TAIL[3]), SIPP),
    "no From": (message(SIPP_VIA, *TAIL[1:]), SIPP),
    "no To": (message(SIPP_VIA, TAIL[0], *TAIL[2:]), SIPP),
    "no CSeq": (message(SIPP_VIA, *TAIL[:3]), SIPP),
    "no Via": (message(*TAIL), SIPP),
    "empty Via": (options("Via: "), SIPP),
    "UTF-8 display name": (message(SIPP_VIA, 'From: "Zoë" <sip:z@example.com>;tag=1', *TAIL[1:]), SIPP),
    "not UTF-8": (message(SIPP_VIA, *TAIL).replace(b"sipp <", b"\xff <"), SIPP),
    "LF line ends": (message(SIPP_VIA, *TAIL).replace(b"\r\n", b"\n"), SIPP),
    "folded line": (message(SIPP_VIA, "From: sipp", " <sip:sipp@127.0.0.1>;tag=1", *TAIL[1:]), SIPP),
    "bare CR": (message(SIPP_VIA, *TAIL, "X-A: a\rb"), SIPP),
    "bare LF": (message(SIPP_VIA, *TAIL, "X-A: a\nb"), SIPP),
    "bare LF before a header": (message(SIPP_VIA, *TAIL, "X-A: a\nTimestamp: 1"), SIPP),
    "NUL": (message(SIPP_VIA, *TAIL, "X-A: a\x00b"), SIPP),
    "line without colon": (message(SIPP_VIA, *TAIL, "NoColonHere"), SIPP),
    "bad header name": (message(SIPP_VIA, *TAIL, "Bad Name: x"), SIPP),
    "201 headers": (options(SIPP_VIA, *(f"X-H{n}: {n}" for n in range(195))), SIPP),
    "too large": (options(SIPP_VIA, "X-Big: " + "a" * DEFAULT_MAX_MESSAGE_BYTES), SIPP),
    "lower-case method": (message(SIPP_VIA, *TAIL[:3], "CSeq: 1 options", start="options sip:a SIP/2.0"), SIPP),
    "lower-case version": (message(SIPP_VIA, *TAIL, start="OPTIONS sip:a sip/2.0"), SIPP),
    "tab in Request-URI": (message(SIPP_VIA, *TAIL, start="OPTIONS sip:a\tb SIP/2.0"), SIPP),
    "CRLF before the request line": (b"\r\n" + SIPP_OPTIONS, SIPP),
    "Via list in one field": (options("Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1, SIP/2.0/UDP 10.0.0.2"), PHONE),
    "IPv6 Via host": (options("Via: SIP/2.0/UDP [2001:db8::10]:5060;branch=z9hG4bK1;rport"), ("2001:db8::10", 5060)),
    "lower-case transport": (options("Via: SIP/2.0/udp 192.168.1.20:5062;branch=z9hG4bK1"), PHONE),
    "lower-case protocol": (options("Via: sip/2.0/UDP 192.168.1.20:5062;branch=z9hG4bK1"), PHONE),
    "blank before params": (options("Via: SIP/2.0/UDP 192.168.1.20:5062 ;branch=z9hG4bK1;rport"), PHONE),
    "upper-case param name": (options("Via: SIP/2.0/UDP 192.168.1.20:5062;Branch=z9hG4bK1"), PHONE),
    "empty param": (options("Via: SIP/2.0/UDP 192.168.1.20:5062;;branch=z9hG4bK1"), PHONE),
    "quoted param value": (options('Via: SIP/2.0/UDP 192.168.1.20:5062;branch=z9hG4bK1;x="a b"'), PHONE),
    "port with a leading zero": (options("Via: SIP/2.0/UDP 192.168.1.20:05062;branch=z9hG4bK1"), PHONE),
    "port out of range": (options("Via: SIP/2.0/UDP 192.168.1.20:70000;branch=z9hG4bK1"), PHONE),
    "repeated Via param": (options("Via: SIP/2.0/UDP 192.168.1.20:5062;branch=z9hG4bK1;branch=z9hG4bK2"), PHONE),
    "repeated Via param, host equal": (options("Via: SIP/2.0/UDP 203.0.113.9:40312;rport=1;rport=2"), PHONE),
}


@pytest.mark.parametrize("case", TAKEN)
async def test_the_fast_path_answers_as_the_full_path_would(case: str) -> None:
    data, source = TAKEN[case]
    answer = answer_plain_options(data, source[0], source[1], _TAG_KEY, DEFAULT_MAX_MESSAGE_BYTES)
    assert answer is not None
    fast, full = await through(data, source, fast=True), await through(data, source, fast=False)
    assert fast.sent == [answer]
    assert full.sent == [answer]
    assert fast.front == full.front and fast.ingest == full.ingest
    assert fast.ingest.options_answered == 1 and fast.front.responses_sent == 1


@pytest.mark.parametrize("case", LEFT)
async def test_anything_unusual_is_left_to_the_full_path(case: str) -> None:
    data, source = LEFT[case]
    assert answer_plain_options(data, source[0], source[1], _TAG_KEY, DEFAULT_MAX_MESSAGE_BYTES) is None
    fast, full = await through(data, source, fast=True), await through(data, source, fast=False)
    assert fast.sent == full.sent
    assert fast.front == full.front and fast.ingest == full.ingest and fast.decided == full.decided


def test_the_answer_to_sipp_and_its_retransmission() -> None:
    answer = answer_plain_options(SIPP_OPTIONS, *SIPP, b"k" * 16, DEFAULT_MAX_MESSAGE_BYTES)
    assert answer is not None
    lines = answer.decode().split("\r\n")
    assert lines[0] == "SIP/2.0 200 OK"
    assert lines[1:3] == [SIPP_VIA, TAIL[0]]
    to, tag = lines[3].split(";tag=")
    assert to == TAIL[1] and len(tag) == 10 and int(tag, 16) >= 0
    assert lines[4:] == [TAIL[2], TAIL[3], "Content-Length: 0", "", ""]
    assert answer_plain_options(SIPP_OPTIONS, *SIPP, b"k" * 16, DEFAULT_MAX_MESSAGE_BYTES) == answer
    assert answer_plain_options(SIPP_OPTIONS, *SIPP, b"j" * 16, DEFAULT_MAX_MESSAGE_BYTES) != answer
    next_one = SIPP_OPTIONS.replace(b"CSeq: 1 ", b"CSeq: 2 ")
    assert answer_plain_options(next_one, *SIPP, b"k" * 16, DEFAULT_MAX_MESSAGE_BYTES) != answer
    assert answer_plain_options(SIPP_OPTIONS, *SIPP, b"k" * 16, len(SIPP_OPTIONS) - 1) is None


class FakeDatagramTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def is_closing(self) -> bool:
        return False

    def sendto(self, payload: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((payload, addr))


@pytest.mark.parametrize("case", ["sipp", "rport flag", "received different from the source"])
def test_udp_listener_with_transactions_sends_the_same_answers(case: str) -> None:
    data, source = TAKEN[case]
    answers = []
    for fast in (True, False):
        ingest = DecidingIngest()
        dispatcher = dispatcher_for(ingest, fast=fast)
        listener = UdpListener(dispatcher)
        transport = FakeDatagramTransport()
        listener.connection_made(transport)  # type: ignore[arg-type]
        listener.datagram_received(data, source)
        listener.datagram_received(data, source)  # a retransmission gets the same answer
        assert len(listener.transactions) == 0  # stateless: nothing kept for Timer J
        assert (dispatcher.stats.received, dispatcher.stats.responses_sent, ingest.stats.options_answered) == (2, 2, 2)
        answers.append(transport.sent)
    assert answers[0] == answers[1]
    assert answers[0][0] == answers[0][1] and answers[0][0][1] == source


async def test_while_draining_a_keepalive_gets_503() -> None:
    ingest = DecidingIngest()
    dispatcher = dispatcher_for(ingest, fast=True)
    await dispatcher.drain(1.0)
    sent: list[bytes] = []
    dispatcher.receive(SIPP_OPTIONS, "udp", SIPP, sent.append, TransactionTable())
    assert len(sent) == 1 and sent[0].startswith(b"SIP/2.0 503 Service Unavailable\r\n")
    assert ingest.stats.options_answered == 0 and dispatcher.stats.rejected_draining == 1


class DecliningIngest(DecidingIngest):
    def answer_keepalive(self) -> bool:
        return False


async def test_a_handler_that_declines_gets_the_full_path() -> None:
    ingest = DecliningIngest()
    sent: list[bytes] = []
    dispatcher_for(ingest, fast=True).receive(SIPP_OPTIONS, "udp", SIPP, sent.append, None)
    full = await through(SIPP_OPTIONS, SIPP, fast=False)
    assert sent == full.sent and ingest.stats.options_answered == 1  # counted once, by the full path


@st.composite
def keepalives(draw: st.DrawFn) -> tuple[bool, bytes]:
    """OPTIONS requests: half of them plain (the fast path must answer), half with some oddity mixed in."""
    plain = draw(st.booleans())

    def pick(usual: tuple[str, ...], odd: tuple[str, ...] = ()) -> str:
        return draw(st.sampled_from(usual if plain else usual + odd))

    via_params = draw(
        st.lists(
            st.sampled_from(("branch=z9hG4bK-1", "rport", "rport=5099", "received=203.0.113.9", "received=10.0.0.1"))
            | st.sampled_from(("alias",) if plain else ("alias", "Branch=x", "", 'x="q"')),
            max_size=4,
            unique_by=(lambda param: param.partition("=")[0]) if plain else None,
        )
    )
    via = (
        pick(("SIP/2.0/UDP", "SIP/2.0/TCP", "SIP/2.0/WSS"), ("SIP/2.0/udp", "sip/2.0/UDP", "SIP / 2.0 / UDP"))
        + " "
        + pick(("203.0.113.9", "192.168.1.20", "pbx.example.com"), ("[2001:db8::1]",))
        + pick(("", ":40312", ":5060"), (":05060", ":70000", " "))
        + "".join(f";{param}" for param in via_params)
        + pick(("",), (", SIP/2.0/UDP second.example.com",))
    )
    gap = pick((": ", ":", " : ", ":\t", ":  "), (": \r\n ",))
    fields = [
        pick(("Via", "v", "VIA")) + gap + via,
        pick(("From", "f", "fRoM")) + gap + "<sip:a@example.com>;tag=f1",
        pick(("To", "t")) + gap + "<sip:b@example.com>" + pick(("", ";x=1"), (";tag=t1", ";TAG=t1")),
        pick(("Call-ID", "i", "call-id")) + gap + pick(("abc", "x@y", "")),
        pick(("CSeq", "cseq")) + gap + pick(("1 OPTIONS", "2147483647 OPTIONS"), ("3 options", "4 INFO", "x OPTIONS")),
    ]
    fields = draw(st.permutations(fields))
    if not plain:
        fields = fields[: draw(st.integers(3, 5))]
    usual_extras = (
        "Timestamp: 5",
        "Via: SIP/2.0/UDP other.example.com;branch=z9hG4bK-2",
        "Max-Forwards: 70",
        "l: 0",
        "Content-Length: 0",
        "User-Agent: t",
    )
    odd_extras = ("Content-Length: 4", "X-Odd: \u00e9", "Bad Name: 1", " folded")
    extras = draw(st.lists(st.sampled_from(usual_extras if plain else usual_extras + odd_extras), max_size=4))
    text = "\r\n".join((pick(("OPTIONS sip:sbc.example.com SIP/2.0",), ("OPTIONS sip:x sip/2.0",)), *fields, *extras))
    text += pick(("\r\n\r\n",), ("\r\n\r\nping",))
    return plain, (text if plain or draw(st.integers(0, 5)) else text.replace("\r\n", "\n")).encode()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keepalives())
def test_generated_keepalives_get_the_full_paths_answer(keepalive: tuple[bool, bytes]) -> None:
    plain, data = keepalive
    answer = answer_plain_options(data, *PHONE, _TAG_KEY, DEFAULT_MAX_MESSAGE_BYTES)
    fast, full = exchange(data, PHONE, fast=True)[1], exchange(data, PHONE, fast=False)[1]
    assert fast == full  # no heartbeat is generated, so nothing waits for a decision
    assert answer is not None or not plain
    if answer is not None:
        assert fast.sent == [answer]
