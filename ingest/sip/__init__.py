"""SIP message model, parser, serializer and header-value parsers: pure Python, no I/O."""

from ingest.sip.digest import (
    build_www_authenticate,
    format_digest,
    parse_digest_credentials_jambonz,
    parse_digest_params,
)
from ingest.sip.errors import SipParseError
from ingest.sip.framing import KEEPALIVE_PING, KEEPALIVE_PONG, KeepAlivePing, StreamFramer
from ingest.sip.headers import (
    CSeq,
    Via,
    parse_contacts,
    parse_cseq,
    parse_delta_seconds,
    parse_via,
    parse_vias,
)
from ingest.sip.message import Headers, SipMessage, SipRequest, SipResponse, canonical_name, header_key
from ingest.sip.parser import DEFAULT_MAX_HEADERS, DEFAULT_MAX_MESSAGE_BYTES, parse_message
from ingest.sip.response import REASON_PHRASES, make_response
from ingest.sip.syntax import split_comma_list, unquote
from ingest.sip.uri import NameAddr, SipUri, parse_name_addr, parse_uri

__all__ = [
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "KEEPALIVE_PING",
    "KEEPALIVE_PONG",
    "REASON_PHRASES",
    "CSeq",
    "Headers",
    "KeepAlivePing",
    "NameAddr",
    "SipMessage",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "SipUri",
    "StreamFramer",
    "Via",
    "build_www_authenticate",
    "canonical_name",
    "format_digest",
    "header_key",
    "make_response",
    "parse_contacts",
    "parse_cseq",
    "parse_delta_seconds",
    "parse_digest_credentials_jambonz",
    "parse_digest_params",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "parse_vias",
    "split_comma_list",
    "unquote",
]
