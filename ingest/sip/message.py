"""The SIP message model: requests, responses and their ordered, case-insensitive header list."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

from ingest.sip.errors import SipParseError
from ingest.sip.headers import (
    CSeq,
    Via,
    parse_contacts,
    parse_cseq,
    parse_delta_seconds,
    parse_unsigned,
    parse_via,
    parse_vias,
)
from ingest.sip.syntax import is_token, split_comma_list
from ingest.sip.uri import NameAddr, parse_name_addr

__all__ = [
    "COMPACT_FORMS",
    "REQUIRED_REQUEST_HEADERS",
    "Headers",
    "SipMessage",
    "SipRequest",
    "SipResponse",
    "canonical_name",
    "header_key",
]

# RFC 3261 7.3.3 and the IANA registry: compact form -> lower-case full name.
COMPACT_FORMS: dict[str, str] = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}
_CANONICAL_SPELLING = {
    name.lower(): name
    for name in (
        "Accept", "Accept-Contact", "Accept-Encoding", "Allow", "Allow-Events", "Authorization", "Call-ID",
        "Contact", "Content-Encoding", "Content-Length", "Content-Type", "CSeq", "Event", "Expires", "From",
        "Identity", "Identity-Info", "Max-Forwards", "Min-Expires", "Path", "Proxy-Authenticate",
        "Proxy-Authorization", "Record-Route", "Refer-To", "Referred-By", "Reject-Contact",
        "Request-Disposition", "Require", "Route", "Server", "Session-Expires", "Subject", "Supported",
        "Timestamp", "To", "User-Agent", "Via", "WWW-Authenticate",
    )
}  # fmt: skip


# Without these a request is answered 400 (Via aside: without it no answer can be addressed at all).
REQUIRED_REQUEST_HEADERS = ("call-id", "cseq", "from", "to")


def header_key(name: str) -> str:
    """The lookup key of a header name: lower-cased, compact forms expanded (``v`` and ``VIA`` -> ``via``)."""
    key = name.lower()
    if len(key) == 1:
        return COMPACT_FORMS.get(key, key)
    return key


_KEY_MEMO: dict[str, str] = {}


def canonical_name(name: str) -> str:
    """The usual spelling of a known header (``i`` -> ``Call-ID``); unknown names are returned unchanged."""
    return _CANONICAL_SPELLING.get(header_key(name), name)


def _checked_field(name: str, value: str) -> tuple[str, str, str]:
    if not is_token(name):
        raise ValueError(f"bad header name {name!r}")
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError(f"header {name} value contains CR, LF or NUL")
    return header_key(name), name, value


class Headers:
    """Header fields in message order, with their names spelled as received.

    Lookups are case-insensitive and treat compact forms as their full names. A repeated header keeps one
    entry per field; :meth:`get_list` splits comma-separated values. ``repr`` shows names only, so logging a
    message never leaks an Authorization header.
    """

    __slots__ = ("_fields", "_first")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        # (lookup key, name as written, value)
        self._fields: list[tuple[str, str, str]] = [_checked_field(name, value) for name, value in fields]
        self._first: dict[str, str] | None = None  # key -> first value, built on the first lookup

    @classmethod
    def from_parsed(cls, fields: list[tuple[str, str, str]]) -> Headers:
        """Wrap ``(key, name, value)`` triples the parser has already validated (no copy, no checks)."""
        headers = cls()
        headers._fields = fields
        return headers

    def changed(self) -> None:
        """Drops the lookup index; every mutation of the fields calls it."""
        self._first = None

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of the first field called ``name``."""
        first = self._first
        if first is None:
            first = {}
            for field_key, _, value in self._fields:
                if field_key not in first:
                    first[field_key] = value
            self._first = first
        key = _KEY_MEMO.get(name)
        if key is None:
            key = header_key(name)
            if len(_KEY_MEMO) < 4096:
                _KEY_MEMO[name] = key
        return first.get(key, default)

    def get_all(self, name: str) -> list[str]:
        """The values of every field called ``name``, in order, each as written."""
        key = header_key(name)
        return [value for field_key, _, value in self._fields if field_key == key]

    def get_list(self, name: str) -> list[str]:
        """Every element of a list header (Via, Contact, Allow, Supported ...) across its fields, in order.

        Commas inside quotes or ``<...>`` do not split. Not for headers whose values contain commas of
        their own (Date, WWW-Authenticate, Authorization).
        """
        return [item for value in self.get_all(name) for item in split_comma_list(value)]

    def names(self) -> list[str]:
        """The header names as written, in order, repeats included."""
        return [name for _, name, _ in self._fields]

    def add(self, name: str, value: str) -> None:
        """Append a field."""
        self._fields.append(_checked_field(name, value))
        self._first = None

    def set(self, name: str, value: str) -> None:
        """Give ``name`` exactly one field with ``value``, where its first field was (or at the end)."""
        key, spelled, value = _checked_field(name, value)
        self._first = None
        for index, (field_key, field_name, _) in enumerate(self._fields):
            if field_key == key:
                self._fields[index] = (key, field_name, value)
                self._fields[index + 1 :] = [field for field in self._fields[index + 1 :] if field[0] != key]
                return
        self._fields.append((key, spelled, value))

    def remove(self, name: str) -> int:
        """Remove every field called ``name``; returns how many there were."""
        key = header_key(name)
        before = len(self._fields)
        self._fields = [field for field in self._fields if field[0] != key]
        self._first = None
        return before - len(self._fields)

    def copy(self) -> Headers:
        return Headers.from_parsed(list(self._fields))

    def fields(self) -> list[tuple[str, str, str]]:
        """``(lookup key, name as written, value)`` for every field, in order (a copy)."""
        return list(self._fields)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = header_key(name)
        for field in self._fields:
            if field[0] == key:
                return True
        return False

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """``(name as written, value)`` pairs in order."""
        return ((name, value) for _, name, value in self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Headers({self.names()!r})"


class SipMessage:
    """What requests and responses share: headers, body, serialization and typed header accessors.

    Equality compares the start line, the header fields (names as written, values, order) and the body, and
    ignores Content-Length fields: the body is the truth and :meth:`serialize` rewrites Content-Length.
    Accessors parse on every call and raise :class:`SipParseError` on a malformed value.
    """

    __slots__ = ("headers", "body", "_top_via", "_cseq")

    def __init__(self, headers: Headers | Iterable[tuple[str, str]] | None, body: bytes) -> None:
        self._top_via: Via | None = None  # parsed once, then kept (cleared when Via fields change)
        self._cseq: tuple[str, CSeq] | None = None  # (the text it was parsed from, the CSeq)
        if headers is None:
            headers = Headers()
        elif not isinstance(headers, Headers):
            headers = Headers(headers)
        self.headers = headers
        self.body = body

    def start_line(self) -> str:
        raise NotImplementedError

    def serialize(self) -> bytes:
        """The message on the wire: CRLF line ends, names as written, Content-Length set to the body."""
        body = self.body
        lines = [self.start_line()]
        length_written = False
        for key, name, value in self.headers._fields:
            if key == "content-length":
                if length_written:
                    continue
                length_written = True
                value = str(len(body))
            lines.append(f"{name}: {value}")
        if not length_written:
            lines.append(f"Content-Length: {len(body)}")
        lines += ("", "")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body

    def __bytes__(self) -> bytes:
        return self.serialize()

    def _comparable(self) -> tuple[list[tuple[str, str]], bytes]:
        fields = [(name, value) for key, name, value in self.headers._fields if key != "content-length"]
        return fields, self.body

    __hash__ = None  # type: ignore[assignment]  # mutable

    @property
    def call_id(self) -> str | None:
        return self.headers.get("call-id")

    @property
    def cseq(self) -> CSeq:
        """The CSeq, parsed (once: treat the result as read-only)."""
        cseq = self._cseq
        if cseq is None or cseq[0] is not self.headers.get("cseq"):
            text = self._required("cseq")
            cseq = self._cseq = (text, parse_cseq(text))
        return cseq[1]

    @property
    def vias(self) -> list[Via]:
        """Every Via value, top first."""
        return parse_vias(self.headers.get_all("via"))

    @property
    def top_via(self) -> Via:
        """The first Via value, parsed (once: treat the result as read-only, assign to change it)."""
        if self._top_via is not None:
            return self._top_via
        items = split_comma_list(self._required("via"))
        if not items:
            raise SipParseError("empty Via")
        self._top_via = parse_via(items[0])
        return self._top_via

    @top_via.setter
    def top_via(self, via: Via) -> None:
        """Replace the top Via value (first element of the first Via field), keeping the rest as written."""
        self._top_via = via
        self.headers.changed()
        fields = self.headers._fields
        for index, (key, name, value) in enumerate(fields):
            if key == "via":
                rest = split_comma_list(value)[1:] if "," in value else ()
                fields[index] = (key, name, ", ".join([str(via), *rest]))
                return
        fields.insert(0, ("via", "Via", str(via)))

    @property
    def from_addr(self) -> NameAddr:
        return parse_name_addr(self._required("from"))

    @property
    def to_addr(self) -> NameAddr:
        return parse_name_addr(self._required("to"))

    @property
    def contacts(self) -> list[NameAddr] | Literal["*"]:
        """The Contact name-addrs in order, ``"*"`` for ``Contact: *``, or ``[]`` without Contact."""
        return parse_contacts(self.headers.get_all("contact"))

    @property
    def expires(self) -> int | None:
        """The Expires header (not the Contact ``expires`` parameter), or None."""
        value = self.headers.get("expires")
        return None if value is None else parse_delta_seconds(value)

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("max-forwards")
        return None if value is None else parse_unsigned(value, "Max-Forwards", max_digits=3)

    def _required(self, key: str) -> str:
        value = self.headers.get(key)
        if value is None:
            raise SipParseError(f"no {canonical_name(key)} header")
        return value


class SipRequest(SipMessage):
    """A request: ``method`` (case as received) and ``uri`` (the Request-URI text; see parse_uri)."""

    __slots__ = ("method", "uri")

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Headers | Iterable[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = uri

    def start_line(self) -> str:
        return f"{self.method} {self.uri} SIP/2.0"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SipRequest):
            return NotImplemented
        return self.method == other.method and self.uri == other.uri and self._comparable() == other._comparable()

    def __repr__(self) -> str:
        return f"<SipRequest {self.method} {self.uri} headers={len(self.headers)} body={len(self.body)}B>"


class SipResponse(SipMessage):
    """A response: ``status`` (100-699) and ``reason`` (the phrase, may be empty)."""

    __slots__ = ("status", "reason")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: Headers | Iterable[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason

    def start_line(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SipResponse):
            return NotImplemented
        return self.status == other.status and self.reason == other.reason and self._comparable() == other._comparable()

    def __repr__(self) -> str:
        return f"<SipResponse {self.status} {self.reason} headers={len(self.headers)} body={len(self.body)}B>"
