"""Turning parsed SIP requests into request events; no processor ever parses SIP.

Pure functions: a request, its transport facts and the ingest id in, an event (or the 400 the
request deserves) out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from events import DigestCredentials, OptionsReceived, RegisterReceived, stamp
from ingest.fronts.front import TransportFacts
from ingest.sip import SipParseError, SipRequest
from ingest.sip.digest import parse_digest_credentials_jambonz
from ingest.sip.keepalive import HEARTBEAT_HEADERS
from ingest.sip.uri import parse_uri

# Headers never copied onto a stream: they carry credentials.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization"})
DIGEST_FIELDS = frozenset(DigestCredentials.__struct_fields__)
_credentials_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A request that parses but breaks a rule: answered 400 with this X-Reason, no event."""

    reason: str


def _uri_host(text: str) -> str | None:
    try:
        uri = parse_uri(text)
    except SipParseError:
        return None
    return uri.host or None


def _expires_param(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip().strip('"')
    if not text.isdigit() or len(text) > 10:
        raise ValueError(value)
    return int(text)


def _authorization(request: SipRequest) -> DigestCredentials | None:
    value = request.headers.get("authorization")
    if value is None:
        return None
    fields = parse_digest_credentials_jambonz(value, require_mandatory=False)
    return DigestCredentials(**{k: v for k, v in fields.items() if k in DIGEST_FIELDS})


def _safe_headers(request: SipRequest) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, _, value in request.headers.fields():  # keys have compact forms spelled out: "v" -> "via"
        if key in SECRET_HEADERS:
            continue
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def register_received(
    request: SipRequest,
    facts: TransportFacts,
    reply_to: str,
    deadline_ms: int | None = None,
    seal: Callable[[str], str] | None = None,
) -> RegisterReceived | BadRequest:
    """The RegisterReceived for a REGISTER, or the 400 it gets for a broken header.

    With `seal`, the parsed Authorization travels sealed (`sealed_authorization`), never readable on a stream.
    """
    headers = request.headers
    call_id = headers.get("call-id")
    if not call_id:
        return BadRequest("Missing Call-ID header")
    try:
        cseq = request.cseq.number
        via_transport = request.top_via.transport.lower()
    except SipParseError as exc:
        return BadRequest(f"Invalid CSeq or Via header: {exc}")
    to_text = headers.get("to")
    if to_text is None:
        return BadRequest("Missing To header")
    try:
        to = request.to_addr
        aor_user, aor_host, to_uri = to.uri.user, to.uri.host, to.uri_text
    except SipParseError:
        aor_user, aor_host, to_uri = None, None, to_text.strip()
    contact_text = headers.get("contact")
    contact_uri: str | None = None
    expires: int | None = None
    if contact_text is not None:
        try:
            contacts = request.contacts
        except SipParseError as exc:
            return BadRequest(f"Invalid Contact header: {exc}")
        if contacts == "*":
            contact_uri = "*"
        elif contacts:
            first = contacts[0]
            contact_uri = first.uri_text
            try:
                expires = _expires_param(first.params.get("expires"))
            except ValueError:
                return BadRequest("Invalid expires parameter in Contact header")
    if expires is None:
        try:
            expires = request.expires
        except SipParseError:
            return BadRequest("Invalid Expires header")
    try:
        authorization = _authorization(request)
    except SipParseError:
        authorization = None
    sealed: str | None = None
    if authorization is not None and seal is not None:
        sealed = seal(_credentials_json.encode(authorization).decode())
        authorization = None
    return RegisterReceived(
        **stamp(),
        reply_to=reply_to,
        call_id=call_id,
        cseq=cseq,
        source_ip=facts.source_ip,
        source_port=facts.source_port,
        transport=facts.transport,
        via_transport=via_transport,
        sbc_address=facts.sbc_address,
        private_sbc_address=facts.private_sbc_address,
        request_uri=request.uri,
        request_uri_host=_uri_host(request.uri),
        to_uri=to_uri,
        aor_user=aor_user,
        aor_host=aor_host,
        contact=contact_text,
        contact_uri=contact_uri,
        expires=expires,
        authorization=authorization,
        sealed_authorization=sealed,
        headers=_safe_headers(request),
        user_agent=headers.get("user-agent"),
        deadline_ms=deadline_ms,
    )


def is_heartbeat(request: SipRequest) -> bool:
    """An OPTIONS from a feature server or RTP server (SPEC 3); other OPTIONS are keep-alives."""
    headers = request.headers
    return any(headers.get(name) is not None for name in HEARTBEAT_HEADERS)


def options_received(
    request: SipRequest, facts: TransportFacts, reply_to: str, deadline_ms: int | None = None
) -> OptionsReceived:
    headers = request.headers
    return OptionsReceived(
        **stamp(),
        reply_to=reply_to,
        call_id=headers.get("call-id") or "",
        source_ip=facts.source_ip,
        source_port=facts.source_port,
        transport=facts.transport,
        fs_status=headers.get("x-fs-status"),
        fs_service_url=headers.get("x-fs-serviceurl"),
        rtp_status=headers.get("x-rtp-status"),
        deadline_ms=deadline_ms,
    )
