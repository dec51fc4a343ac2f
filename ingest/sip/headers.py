"""Typed values of the headers the sidecar reads: Via, CSeq, Contact and the integer headers."""

from __future__ import annotations

from typing import Literal

from ingest.sip.errors import SipParseError
from ingest.sip.syntax import Params, format_params, is_token, parse_params, split_comma_list
from ingest.sip.uri import NameAddr, parse_host_port, parse_name_addr

__all__ = [
    "CSeq",
    "Via",
    "MAX_CSEQ",
    "MAX_DELTA_SECONDS",
    "parse_contacts",
    "parse_cseq",
    "parse_delta_seconds",
    "parse_unsigned",
    "parse_via",
    "parse_vias",
]

MAX_CSEQ = 2**31 - 1  # RFC 3261 8.1.1.5: the sequence number must be less than 2**31
MAX_DELTA_SECONDS = 2**32 - 1  # RFC 3261 20.19: larger Expires values are taken as this


class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=...;rport;received=...``.

    ``transport`` is upper-cased (UDP, TCP, TLS, WS, WSS, SCTP or an extension token); ``host`` keeps IPv6
    brackets; ``params`` as in :func:`ingest.sip.syntax.parse_params` (``rport`` with no value is None).
    """

    __slots__ = ("protocol", "transport", "host", "port", "params")

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: Params | None = None,
        *,
        protocol: str = "SIP/2.0",
    ) -> None:
        self.protocol = protocol
        self.transport = transport
        self.host = host
        self.port = port
        self.params: Params = {} if params is None else params

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def has_rport(self) -> bool:
        """True when the ``rport`` parameter is present, with or without a value (RFC 3581)."""
        return "rport" in self.params

    @property
    def rport(self) -> int | None:
        """The port in ``rport=<port>``; None when absent, a flag, or not a number."""
        value = self.params.get("rport")
        if value and value.isascii() and value.isdigit() and len(value) <= 5:
            return int(value)
        return None

    def with_source(self, source_ip: str, source_port: int) -> Via:
        """A copy with ``received`` / ``rport`` set as a server does on receipt (RFC 3261 18.2.1, RFC 3581 4).

        ``received`` is added when the sent-by host differs from the source address, and always when the
        request asked for ``rport``; a valueless ``rport`` gets the source port.
        """
        params = dict(self.params)
        host = self.host[1:-1] if self.host.startswith("[") else self.host
        asked_rport = "rport" in params and params["rport"] is None
        if asked_rport:
            params["rport"] = str(source_port)
        if asked_rport or host != source_ip:
            params["received"] = source_ip
        return Via(self.transport, self.host, self.port, params, protocol=self.protocol)

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {self.host}{port}{format_params(self.params)}"

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return (
            self.protocol == other.protocol
            and self.transport == other.transport
            and self.host == other.host
            and self.port == other.port
            and self.params == other.params
        )

    __hash__ = None  # type: ignore[assignment]  # mutable


class CSeq:
    """``CSeq: <number> <method>``."""

    __slots__ = ("number", "method")

    def __init__(self, number: int, method: str) -> None:
        self.number = number
        self.method = method

    def __str__(self) -> str:
        return f"{self.number} {self.method}"

    def __repr__(self) -> str:
        return f"CSeq({self.number!r}, {self.method!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CSeq):
            return NotImplemented
        return self.number == other.number and self.method == other.method

    def __hash__(self) -> int:
        return hash((self.number, self.method))


def parse_via(value: str) -> Via:
    """Parse one Via value (not a comma-separated list; see :func:`parse_vias`)."""
    first = value.find("/")
    second = value.find("/", first + 1)
    if first < 0 or second < 0:
        raise SipParseError("Via without sent-protocol")
    name = value[:first].strip(" \t")
    version = value[first + 1 : second].strip(" \t")
    pieces = value[second + 1 :].split(None, 1)
    if len(pieces) != 2:
        raise SipParseError("Via without sent-by")
    transport, sent_by_and_params = pieces
    if not (is_token(name) and is_token(version) and is_token(transport)):
        raise SipParseError("bad Via sent-protocol")
    sent_by, _, params_text = sent_by_and_params.partition(";")
    host, port = parse_host_port(sent_by)
    return Via(transport.upper(), host, port, parse_params(params_text), protocol=f"{name.upper()}/{version}")


def parse_vias(values: list[str]) -> list[Via]:
    """All Via values of a message, top first, from its Via header fields in order."""
    return [parse_via(item) for value in values for item in split_comma_list(value)]


def parse_cseq(value: str) -> CSeq:
    pieces = value.split()
    if len(pieces) != 2:
        raise SipParseError("CSeq is not '<number> <method>'")
    number = parse_unsigned(pieces[0], "CSeq")
    if number > MAX_CSEQ or not is_token(pieces[1]):
        raise SipParseError("bad CSeq")
    return CSeq(number, pieces[1])


def parse_contacts(values: list[str]) -> list[NameAddr] | Literal["*"]:
    """Contact values of a message: a list of name-addrs, or ``"*"`` for ``Contact: *`` alone."""
    items = [item for value in values for item in split_comma_list(value)]
    if "*" in items:
        if len(items) != 1:
            raise SipParseError("'*' mixed with other contacts")
        return "*"
    return [parse_name_addr(item) for item in items]


def parse_unsigned(value: str, what: str, *, max_digits: int = 10) -> int:
    """A non-negative decimal integer (Content-Length, Max-Forwards, CSeq number)."""
    text = value.strip(" \t")
    if not (0 < len(text) <= max_digits and text.isascii() and text.isdigit()):
        raise SipParseError(f"{what} is not a number")
    return int(text)


def parse_delta_seconds(value: str, what: str = "Expires") -> int:
    """A delta-seconds value (Expires header or parameter), capped at 2**32-1 as RFC 3261 20.19 says."""
    text = value.strip(" \t")
    if not (text and text.isascii() and text.isdigit()):
        raise SipParseError(f"{what} is not a number")
    return int(text) if len(text) <= 10 and int(text) <= MAX_DELTA_SECONDS else MAX_DELTA_SECONDS
