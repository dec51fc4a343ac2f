"""Building the response to a request (RFC 3261 8.2.6)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from events.sip_status import REASON_PHRASES
from ingest.sip.errors import SipParseError
from ingest.sip.message import Headers, SipRequest, SipResponse
from ingest.sip.syntax import is_token
from ingest.sip.uri import parse_name_addr

__all__ = ["COPIED_HEADERS", "REASON_PHRASES", "make_response"]

# Copied from the request in this order (RFC 3261 8.2.6.1-2); Timestamp is echoed without a delay value.
COPIED_HEADERS = ("via", "from", "to", "call-id", "cseq", "timestamp")


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    extra_headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    *,
    to_tag: str | None = None,
) -> SipResponse:
    """The response to ``request``: Via(s), From, To, Call-ID, CSeq (and Timestamp) copied as written.

    ``to_tag`` is added to To when the request's To has no tag (pass one for every response but 100); a To
    that mentions a tag but does not parse is copied unchanged. ``reason`` defaults to the usual phrase for ``status``.
    ``extra_headers`` follow the copied ones, in order. A request without Via cannot be answered:
    :class:`SipParseError`. A status outside 100-699, a tag that is not a token or a bad extra header:
    ValueError.
    """
    if not 100 <= status <= 699:
        raise ValueError(f"not a SIP status code: {status}")
    if to_tag is not None and not is_token(to_tag):
        raise ValueError(f"To tag is not a token: {to_tag!r}")
    fields = [field for field in request.headers.fields() if field[0] in COPIED_HEADERS]
    if not any(field[0] == "via" for field in fields):
        raise SipParseError("request without Via cannot be answered")
    if to_tag is not None:
        for index, (key, name, value) in enumerate(fields):
            if key == "to":
                fields[index] = (key, name, _with_tag(value, to_tag))
                break
    headers = Headers.from_parsed(fields)
    items = extra_headers.items() if isinstance(extra_headers, Mapping) else extra_headers
    for name, value in items:
        headers.add(name, value)
    phrase = REASON_PHRASES.get(status, "") if reason is None else reason
    if "\r" in phrase or "\n" in phrase:
        raise ValueError("reason phrase contains CR or LF")
    return SipResponse(status, phrase, headers)


def _with_tag(to_value: str, tag: str) -> str:
    if "tag=" not in to_value.lower():
        return f"{to_value};tag={tag}"  # no tag anywhere: nothing to parse (the common case)
    try:
        address = parse_name_addr(to_value)
    except SipParseError:
        return to_value
    if "tag" in address.params:
        return to_value
    return f"{to_value};tag={tag}"
