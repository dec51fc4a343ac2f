"""Parsing one SIP message from bytes (a datagram, or a frame cut by :class:`StreamFramer`)."""

from __future__ import annotations

from ingest.sip.errors import SipParseError
from ingest.sip.message import Headers, SipRequest, SipResponse, header_key
from ingest.sip.syntax import TOKEN_CHARS

__all__ = [
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "SipParseError",
    "find_header_end",
    "header_name",
    "parse_message",
]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
DEFAULT_MAX_HEADERS = 200
_MAX_CONTENT_LENGTH_DIGITS = 10


def find_header_end(data: bytes | bytearray, start: int = 0) -> tuple[int, int]:
    """Where the header section that begins at ``start`` ends: ``(end of the last header line, body start)``.

    The blank line may be CRLF or bare LF. Returns ``(-1, -1)`` while there is no blank line yet.
    """
    crlf = data.find(b"\n\r\n", start)
    lf = data.find(b"\n\n", start, len(data) if crlf < 0 else crlf + 1)  # only an earlier LF LF
    if lf >= 0:
        return lf, lf + 2
    if crlf >= 0:
        return crlf, crlf + 3
    return -1, -1


def parse_message(
    data: bytes,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_headers: int = DEFAULT_MAX_HEADERS,
) -> SipRequest | SipResponse:
    """Parse a whole SIP message; any malformation raises :class:`SipParseError` and nothing else.

    Tolerant framing: CRLF or bare LF line ends, CRLFs before the start line ignored, folded header lines
    joined with one space, a missing blank line read as "no body". The body is bounded by Content-Length
    (extra bytes are dropped, as RFC 3261 18.3 says for datagrams); without Content-Length the rest of the
    data is the body; a Content-Length larger than the data raises.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > max_message_bytes:
        raise SipParseError(f"message larger than {max_message_bytes} bytes")
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    head_end, body_start = find_header_end(data)
    if head_end < 0:
        body_start = len(data)
        head_end = body_start - (2 if data.endswith(b"\r\n") else 1 if data.endswith(b"\n") else 0)
    head = data[:head_end].decode("utf-8", "surrogateescape")
    if "\r" in head:
        head = head.replace("\r\n", "\n")
        if head[-1:] == "\r":
            head = head[:-1]
        if "\r" in head:
            raise SipParseError("bare CR in header section")
    if "\x00" in head:
        raise SipParseError("NUL in header section")
    lines = head.split("\n")
    fields = _parse_header_lines(lines, max_headers)
    body = _body(data, body_start, fields)
    start_line = lines[0]
    if not start_line.isprintable():
        raise SipParseError("control character in start line")
    if start_line[:4].upper() == "SIP/":
        return _response(start_line, fields, body)
    return _request(start_line, fields, body)


def _parse_header_lines(lines: list[str], max_headers: int) -> list[tuple[str, str, str]]:
    fields: list[tuple[str, str, str]] = []
    append = fields.append
    for index in range(1, len(lines)):
        line = lines[index]
        if not line:
            raise SipParseError("empty header line")
        if line[0] in " \t":
            if not fields:
                raise SipParseError("continuation line before the first header")
            key, name, value = fields[-1]
            more = line.strip(" \t")
            if more:
                fields[-1] = (key, name, f"{value} {more}" if value else more)
            continue
        raw_name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError("header line without ':'")
        key, name = header_name(raw_name)
        append((key, name, value.strip(" \t")))
    if len(fields) > max_headers:
        raise SipParseError(f"more than {max_headers} headers")
    return fields


# Header names as they appear before the colon -> (lookup key, name). Peers send the same few spellings
# over and over, so each is checked and lower-cased once; the memo stops growing at _NAMES_MAX.
_NAMES: dict[str, tuple[str, str]] = {}
_NAMES_MAX = 4096


def header_name(raw_name: str) -> tuple[str, str]:
    """``(lookup key, name)`` of a header name as written before its colon; :class:`SipParseError` if invalid."""
    known = _NAMES.get(raw_name)
    return _header_name(raw_name) if known is None else known


def _header_name(raw_name: str) -> tuple[str, str]:
    name = raw_name.rstrip(" \t")
    if not name or not TOKEN_CHARS.issuperset(name):
        raise SipParseError("bad header name")
    known = (header_key(name), name)
    if len(_NAMES) < _NAMES_MAX:
        _NAMES[raw_name] = known
    return known


def _body(data: bytes, body_start: int, fields: list[tuple[str, str, str]]) -> bytes:
    declared = None
    for key, _, value in fields:
        if key == "content-length":
            if not (0 < len(value) <= _MAX_CONTENT_LENGTH_DIGITS and value.isascii() and value.isdigit()):
                raise SipParseError("Content-Length is not a number")
            length = int(value)
            if declared is not None and declared != length:
                raise SipParseError("conflicting Content-Length headers")
            declared = length
    available = len(data) - body_start
    if declared is None or declared == available:
        return data[body_start:]
    if declared > available:
        raise SipParseError("body shorter than Content-Length")
    return data[body_start : body_start + declared]


def _request(start_line: str, fields: list[tuple[str, str, str]], body: bytes) -> SipRequest:
    parts = start_line.split(" ")
    if len(parts) != 3:
        raise SipParseError("request line is not 'METHOD SP Request-URI SP SIP/2.0'")
    method, uri, version = parts
    if version.upper() != "SIP/2.0":
        raise SipParseError("unsupported SIP version")
    if not method or not TOKEN_CHARS.issuperset(method):
        raise SipParseError("bad method")
    if not uri:
        raise SipParseError("empty Request-URI")
    return SipRequest(method, uri, Headers.from_parsed(fields), body)


def _response(start_line: str, fields: list[tuple[str, str, str]], body: bytes) -> SipResponse:
    version, _, rest = start_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if version.upper() != "SIP/2.0":
        raise SipParseError("unsupported SIP version")
    if not (len(code) == 3 and code.isascii() and code.isdigit() and code[0] in "123456"):
        raise SipParseError("bad status code")
    return SipResponse(int(code), reason, Headers.from_parsed(fields), body)
