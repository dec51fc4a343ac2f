"""The SIP text the app hands to drachtio: responses (DRACHTIO.md 6) and new requests (DRACHTIO.md 7).

drachtio builds the wire message itself: for a response it takes Via from the transaction and drops
any Via, Route, Record-Route, RSeq or Content-Length the app sends; for a request it adds Via,
Max-Forwards, and Call-ID/CSeq/From-tag when missing. So a response carries, like drachtio-srf's,
`Call-ID`, `CSeq`, `From` and `To` copied from the request, then the caller's headers, then a
Content-Length (recomputed by drachtio anyway). Header names are written in full, never compact.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ingest.fronts.front import OutboundRequest
from ingest.sip import (
    REASON_PHRASES,
    Headers,
    SipRequest,
    SipResponse,
    canonical_name,
    header_key,
)
from ingest.sip.syntax import is_token

log = logging.getLogger(__name__)

# Copied from the request into every response, in drachtio-srf's order.
_COPIED = ("call-id", "cseq", "from", "to")
# drachtio throws these away in an app's response; Content-Length is written by serialize().
_NOT_IN_RESPONSES = frozenset({"via", "route", "record-route", "rseq", "content-length"})
# drachtio writes these in a new request.
_NOT_IN_REQUESTS = frozenset({"via", "content-length"})


def render_response(
    request: SipRequest,
    status: int,
    reason: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    """The response text for `request`. A given Call-ID, CSeq, From or To replaces the copied one.

    ValueError for a status outside 100-699, a reason or value with CR/LF, or a bad header name.
    """
    copied = {key: value for key in _COPIED if (value := request.headers.get(key)) is not None}
    return _response_text(copied, status, reason, headers, body)


def salvage_response(raw_request: bytes, status: int, reason: str) -> bytes:
    """A response to a request the parser refused, with whatever Call-ID/CSeq/From/To lines it has."""
    copied: dict[str, str] = {}
    head = raw_request.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    for line in head.splitlines()[1:]:
        name, colon, value = line.partition(":")
        name = name.strip()
        if colon and is_token(name) and (key := header_key(name)) in _COPIED and key not in copied:
            copied[key] = value.strip()
    try:
        return _response_text(copied, status, reason, (), b"")
    except ValueError:
        return _response_text({}, status, reason, (), b"")


def render_request(request: OutboundRequest) -> bytes:
    """`METHOD uri SIP/2.0`, the caller's headers in order (full names), Content-Length, body."""
    if not is_token(request.method):
        raise ValueError(f"bad SIP method {request.method!r}")
    uri = request.request_uri
    if not uri or any(char in uri for char in " \t\r\n"):
        raise ValueError(f"bad Request-URI {uri!r}")
    fields = _outgoing_fields(request.headers, _NOT_IN_REQUESTS)
    return SipRequest(request.method.upper(), uri, fields, request.body).serialize()


def timeout_response(request: OutboundRequest) -> SipResponse:
    """The 408 Request Timeout `send_request` returns when no final response came in time."""
    given = Headers(request.headers)
    fields = [(canonical_name(key), value) for key in _COPIED if (value := given.get(key)) is not None]
    return SipResponse(408, REASON_PHRASES[408], fields)


def _response_text(
    copied: dict[str, str], status: int, reason: str, headers: Sequence[tuple[str, str]], body: bytes
) -> bytes:
    if not 100 <= status <= 699:
        raise ValueError(f"not a SIP status code: {status}")
    phrase = reason or REASON_PHRASES.get(status, "")
    if "\r" in phrase or "\n" in phrase:
        raise ValueError("reason phrase contains CR or LF")
    given = dict(copied)
    extra: list[tuple[str, str]] = []
    for name, value in _outgoing_fields(headers, _NOT_IN_RESPONSES):
        key = header_key(name)
        if key in _COPIED:
            given[key] = value
        else:
            extra.append((name, value))
    fields = [(canonical_name(key), given[key]) for key in _COPIED if key in given]
    return SipResponse(status, phrase, [*fields, *extra], body).serialize()


def _outgoing_fields(headers: Sequence[tuple[str, str]], dropped: frozenset[str]) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    for name, value in headers:
        if header_key(name) in dropped:
            log.debug("header left to drachtio name=%s", name)
            continue
        fields.append((canonical_name(name), value))
    return fields
