"""Answering a plain OPTIONS keep-alive straight from its bytes, without building a message.

Keep-alive OPTIONS are most of what an SBC's sidecar receives, and their answer (200 OK, stateless) depends
on nothing but the request. :func:`answer_plain_options` recognizes the usual shape of such a request and
returns the exact bytes the full path (parse, RFC 3581 Via rewrite, ``make_response``, ``serialize``) would
send; for anything unusual it returns None and the full path decides, with all its error answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ingest.sip.errors import SipParseError
from ingest.sip.headers import MAX_CSEQ, Via
from ingest.sip.message import REQUIRED_REQUEST_HEADERS
from ingest.sip.parser import DEFAULT_MAX_HEADERS, header_name
from ingest.sip.response import COPIED_HEADERS
from ingest.sip.syntax import TOKEN_CHARS, Params
from ingest.sip.tags import stateless_to_tag

__all__ = ["HEARTBEAT_HEADERS", "answer_plain_options"]

_START = "OPTIONS "
_END = " SIP/2.0"
# An OPTIONS with one of these is a feature or RTP server's heartbeat (SPEC 3), decided by a processor.
HEARTBEAT_HEADERS = ("x-fs-status", "x-rtp-status")
_COPIED = frozenset(COPIED_HEADERS)
_REQUIRED = frozenset(("via", *REQUIRED_REQUEST_HEADERS))
_HEARTBEAT_KEYS = frozenset(HEARTBEAT_HEADERS)
_PLAIN_CSEQ = re.compile(r"([0-9]{1,10}) OPTIONS")
_MAX_PORT = 65535


def _char_class(chars: Iterable[str]) -> str:
    """The inside of a regex ``[...]`` that matches exactly ``chars``."""
    return "".join(re.escape(char) for char in sorted(chars))


_TOKEN = _char_class(TOKEN_CHARS)
_UPPER_TOKEN = _char_class(char for char in TOKEN_CHARS if not char.islower())
_LOWER_TOKEN = _char_class(char for char in TOKEN_CHARS if not char.isupper())


# A top Via value spelled exactly as `str(Via)` writes it: upper-case transport, no IPv6 host, a port
# without leading zeros, lower-case parameter names, plain non-empty values.
_CANONICAL_VIA = re.compile(
    rf"SIP/2\.0/([{_UPPER_TOKEN}]+) ([A-Za-z0-9._-]+)(?::(0|[1-9][0-9]{{0,4}}))?"
    rf"((?:;[{_LOWER_TOKEN}]+(?:=[{_TOKEN}:\[\]]+)?)*)"
)


def answer_plain_options(
    data: bytes, source_ip: str, source_port: int, tag_key: bytes, max_message_bytes: int
) -> bytes | None:
    """The 200 OK to a plain OPTIONS keep-alive received from ``source_ip:source_port``, or None.

    None whenever the request is not the common, unambiguous shape: not pure ASCII, a body or a Content-Length
    other than ``0``, bare CR or LF, NUL, a folded line, a method or version spelled otherwise, a bad header
    name, a missing required header, a CSeq other than ``<number> OPTIONS``, a top Via with a comma or not in
    canonical spelling, a To with a tag, a heartbeat header, too many headers or too many bytes.
    """
    if len(data) > max_message_bytes or not data.isascii():
        return None
    text = data.decode("ascii")
    head_end = text.find("\r\n\r\n")
    if head_end != len(text) - 4 or "\x00" in text:
        return None  # a body (or no blank line), or NUL
    lines = text[:head_end].split("\r\n")
    if text.count("\n") != len(lines) + 1 or text.count("\r") != len(lines) + 1:
        return None  # bare CR or LF
    if len(lines) > DEFAULT_MAX_HEADERS + 1 or not _plain_request_line(lines[0]):
        return None
    fields = _copied_fields(lines)
    if fields is None:
        return None
    copied, first = fields
    if not first.keys() >= _REQUIRED:
        return None
    via_at, via_name, via = first["via"]
    to_at, to_name, to = first["to"]
    cseq = first["cseq"][2]
    number = _PLAIN_CSEQ.fullmatch(cseq)
    if number is None or int(number.group(1)) > MAX_CSEQ or "tag=" in to.lower():
        return None
    received_via = _received_via(via, source_ip, source_port)
    if received_via is None:
        return None
    if received_via != via:
        copied[via_at] = f"{via_name}: {received_via}"
    tag = stateless_to_tag(tag_key, received_via, first["call-id"][2], first["from"][2], cseq)
    copied[to_at] = f"{to_name}: {to};tag={tag}"
    copied.append("Content-Length: 0\r\n\r\n")
    return ("SIP/2.0 200 OK\r\n" + "\r\n".join(copied)).encode("ascii")


def _plain_request_line(line: str) -> bool:
    """``OPTIONS <Request-URI> SIP/2.0`` exactly, the URI printable and without spaces."""
    uri = line[len(_START) : -len(_END)]
    return line.startswith(_START) and line.endswith(_END) and uri.isprintable() and bool(uri) and " " not in uri


def _copied_fields(lines: list[str]) -> tuple[list[str], dict[str, tuple[int, str, str]]] | None:
    """The answer's copied header lines, and the first field of each copied header: (line index, name, value).

    None for a bad or folded header line, a Content-Length other than 0 or a heartbeat header.
    """
    copied: list[str] = []
    first: dict[str, tuple[int, str, str]] = {}
    try:
        for index in range(1, len(lines)):
            raw_name, colon, value = lines[index].partition(":")
            if not colon:
                return None
            key, name = header_name(raw_name)  # a folded line starts with a blank: not a name
            if key in _COPIED:
                value = value.strip(" \t")
                if key not in first:
                    first[key] = (len(copied), name, value)
                copied.append(f"{name}: {value}")
            elif key == "content-length":
                if value.strip(" \t") != "0":
                    return None
            elif key in _HEARTBEAT_KEYS:
                return None
    except SipParseError:
        return None
    return copied, first


def _received_via(value: str, source_ip: str, source_port: int) -> str | None:
    """The top Via as the answer carries it after the RFC 3581 rewrite, or None for a shape not taken here.

    The full path writes a Via it changed in canonical spelling and leaves one it did not change as written;
    only canonical Vias are taken, so both give the same text.
    """
    match = _CANONICAL_VIA.fullmatch(value)
    if match is None:
        return None
    transport, host, port, params_text = match.groups()
    if port is not None and int(port) > _MAX_PORT:
        return None
    items = params_text.split(";")[1:]
    if host == source_ip and "rport" not in items and len(items) < 2:
        return value  # the usual case: nothing to add (RFC 3581 4), no parameter that could repeat
    params: Params = {}
    for item in items:
        name, equals, param_value = item.partition("=")
        params[name] = param_value if equals else None
    if len(params) != len(items):
        return None  # a repeated parameter would be dropped by the rewrite
    top = Via(transport, host, None if port is None else int(port), params)
    rewritten = top.with_source(source_ip, source_port)
    return value if rewritten.params == params else str(rewritten)
