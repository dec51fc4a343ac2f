"""The messages inside drachtio frames: a `|`-separated leader line, then CRLF and raw SIP (DRACHTIO.md 2.2).

Server → app messages are read into `CommandReply` (type `response`), `SipDelivery` (type `sip`) or
`OtherMessage` (`cdr:*`, anything new). App → server payloads are built by the `*_payload` functions.
Field numbers in comments count from 0 after splitting the leader on `|`, as the doc does.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

CRLF = b"\r\n"

_VERSION = re.compile(r"^v(\d+)\.(\d+)\.(\d+)")
_DEFAULT_SOURCE_PORT = 5060  # what drachtio-srf assumes when field 6 is empty


class MessageFormatError(ValueError):
    """A server message whose leader does not have the fields its type needs."""


@dataclass(frozen=True, slots=True)
class CommandReply:
    """`<id>|response|<app msgId>|<status>|...`: the server's answer to one of our messages."""

    fields: tuple[str, ...]
    sip: bytes | None

    @property
    def request_id(self) -> str:
        return self.fields[2]

    @property
    def status(self) -> str:
        return self.fields[3]

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    @property
    def reason(self) -> str:
        """Readable reason of a NO/NOK reply (field 4)."""
        return self.fields[4] if len(self.fields) > 4 else ""

    @property
    def continues(self) -> bool:
        """More replies to the same message follow (only `proxy` does this)."""
        return len(self.fields) > 12 and self.fields[12] == "continue"

    def field(self, index: int) -> str:
        return self.fields[index] if len(self.fields) > index else ""


@dataclass(frozen=True, slots=True)
class SipDelivery:
    """`<id>|sip|<source>|<bytes>|<proto>|<addr>|<port>|<time>|<txn>|<dialog>|[<recvAddr>|<recvPort>|]`."""

    source: str  # "network", or "application" for unsolicited copies
    protocol: str  # lower-case; empty on responses the stack made up itself
    source_address: str
    source_port: int
    transaction_id: str
    dialog_id: str
    received_on: str | None  # "recvAddr:recvPort", only on new out-of-dialog requests
    sip: bytes

    @property
    def is_response(self) -> bool:
        return self.sip.startswith(b"SIP/")


@dataclass(frozen=True, slots=True)
class OtherMessage:
    """A server message this client does not act on (`cdr:*`, or a type newer than this code)."""

    fields: tuple[str, ...]
    sip: bytes | None

    @property
    def kind(self) -> str:
        return self.fields[1]


ServerMessage = CommandReply | SipDelivery | OtherMessage


def new_message_id() -> str:
    return str(uuid.uuid4())


def split_payload(payload: bytes) -> tuple[tuple[str, ...], bytes | None]:
    """Leader fields (empty ones kept) and the raw SIP after the first CRLF, if there is one."""
    leader, crlf, sip = payload.partition(CRLF)
    try:
        text = leader.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageFormatError("drachtio leader is not UTF-8") from exc
    return tuple(text.split("|")), (sip if crlf else None)


def parse_server_message(payload: bytes) -> ServerMessage:
    """Read one server → app payload; raise MessageFormatError if its leader is short or malformed."""
    fields, sip = split_payload(payload)
    if len(fields) < 2:
        raise MessageFormatError(f"drachtio message has {len(fields)} field(s)")
    kind = fields[1]
    if kind == "response":
        if len(fields) < 4:
            raise MessageFormatError(f"drachtio response has {len(fields)} fields, needs 4")
        return CommandReply(fields=fields, sip=sip)
    if kind == "sip":
        return _sip_delivery(fields, sip)
    return OtherMessage(fields=fields, sip=sip)


def _sip_delivery(fields: tuple[str, ...], sip: bytes | None) -> SipDelivery:
    if len(fields) < 10 or sip is None:
        raise MessageFormatError(f"drachtio sip message has {len(fields)} fields, needs 10 and a SIP part")
    port_text = fields[6]
    if port_text and not (port_text.isascii() and port_text.isdigit()):
        raise MessageFormatError(f"drachtio sip message has source port {port_text[:16]!r}")
    received_on = f"{fields[10]}:{fields[11]}" if len(fields) > 11 and fields[10] else None
    return SipDelivery(
        source=fields[2],
        protocol=fields[4].lower(),
        source_address=fields[5],
        source_port=int(port_text) if port_text else _DEFAULT_SOURCE_PORT,
        transaction_id=fields[8],
        dialog_id=fields[9],
        received_on=received_on,
        sip=sip,
    )


def join_payload(fields: Sequence[str], sip: bytes | None = None) -> bytes:
    """`f0|f1|...` (+ CRLF + sip) as UTF-8. ValueError if a field holds `|`, CR or LF.

    The message never names the offending value: one of the fields is the shared secret.
    """
    for index, value in enumerate(fields):
        if "|" in value or "\r" in value or "\n" in value:
            raise ValueError(f"drachtio leader field {index} contains '|', CR or LF")
    leader = "|".join(fields).encode("utf-8")
    return leader if sip is None else leader + CRLF + sip


def authenticate_payload(message_id: str, secret: str, tags: Sequence[str] = ()) -> bytes:
    """`<id>|authenticate|<secret>|<tags>`; the tags field is always sent, empty if there are none."""
    return join_payload((message_id, "authenticate", secret, ",".join(tags)))


def route_payload(message_id: str, verb: str) -> bytes:
    """`<id>|route|<verb>`; the server matches verbs case-sensitively against lower-case methods."""
    return join_payload((message_id, "route", verb.lower()))


def ping_payload(message_id: str) -> bytes:
    return join_payload((message_id, "ping"))


def response_payload(message_id: str, transaction_id: str, sip: bytes, dialog_id: str = "") -> bytes:
    """`<id>|sip|<transactionId>|<dialogId>` + CRLF + a SIP response (DRACHTIO.md section 6)."""
    if not transaction_id:
        raise ValueError("a SIP response to drachtio needs the transaction id of its request")
    return join_payload((message_id, "sip", transaction_id, dialog_id), sip)


def request_payload(message_id: str, sip: bytes, outbound_proxy: str | None = None) -> bytes:
    """`<id>|sip||` (+ `|<proxy>`) + CRLF + a new out-of-dialog SIP request (DRACHTIO.md section 7)."""
    fields = [message_id, "sip", "", ""]
    if outbound_proxy:
        fields.append(outbound_proxy)
    return join_payload(fields, sip)


def server_version_at_least(version: str, minimum: tuple[int, int, int]) -> bool:
    """Compare `v0.9.10-1-g9c2dd4cb6a`-style versions; an unreadable version counts as too old."""
    match = _VERSION.match(version)
    if match is None:
        return False
    return tuple(int(part) for part in match.groups()) >= minimum
