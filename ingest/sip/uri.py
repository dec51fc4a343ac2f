"""SIP, SIPS and tel URIs (RFC 3261 19.1, RFC 3966) and name-addr / addr-spec values (RFC 3261 20.10)."""

from __future__ import annotations

import ipaddress
import re
import string

from ingest.sip.errors import SipParseError
from ingest.sip.syntax import Params, format_params, parse_params, quote, quoted_string_end, unquote

__all__ = ["NameAddr", "SipUri", "parse_host_port", "parse_name_addr", "parse_uri"]

_SIP_SCHEMES = frozenset({"sip", "sips"})
_HOST_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")
# Characters a user or password part may not contain unescaped (besides whitespace and controls).
_USER_BAD = frozenset(' \t<>"@[]')
# An unquoted display name should be tokens (RFC 3261 25.1); accept any printable text without delimiters.
_DISPLAY_BAD = frozenset('"<>;,\\')


class SipUri:
    """A parsed ``sip:``, ``sips:`` or ``tel:`` URI.

    ``host`` keeps the brackets of an IPv6 reference (``[2001:db8::1]``) and the case as received. A tel URI
    has its number in ``user`` and an empty ``host``. ``params`` are the ``;`` URI parameters and
    ``headers`` the ``?`` URI headers, both in source order.
    """

    __slots__ = ("scheme", "user", "password", "host", "port", "params", "headers")

    def __init__(
        self,
        scheme: str,
        host: str,
        *,
        user: str | None = None,
        password: str | None = None,
        port: int | None = None,
        params: Params | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.scheme = scheme
        self.host = host
        self.user = user
        self.password = password
        self.port = port
        self.params: Params = {} if params is None else params
        self.headers: dict[str, str] = {} if headers is None else headers

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lower-cased, or None."""
        value = self.params.get("transport")
        return value.lower() if value else None

    def __str__(self) -> str:
        parts = [self.scheme, ":"]
        if self.scheme == "tel":
            parts.append(self.user or "")
        else:
            if self.user is not None:
                parts.append(self.user)
                if self.password is not None:
                    parts += (":", self.password)
                parts.append("@")
            parts.append(self.host)
            if self.port is not None:
                parts += (":", str(self.port))
        parts.append(format_params(self.params))
        if self.headers:
            parts += ("?", "&".join(f"{name}={value}" for name, value in self.headers.items()))
        return "".join(parts)

    def __repr__(self) -> str:
        return f"SipUri({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SipUri):
            return NotImplemented
        return (
            self.scheme == other.scheme
            and self.user == other.user
            and self.password == other.password
            and self.host == other.host
            and self.port == other.port
            and self.params == other.params
            and self.headers == other.headers
        )

    __hash__ = None  # type: ignore[assignment]  # mutable


class NameAddr:
    """A ``"Display" <uri>;params`` or ``uri;params`` value (From, To, Contact, Refer-To ...).

    ``params`` are the header parameters after the URI (``tag``, ``expires``, ``q``, ``+sip.instance`` ...),
    names lower-cased, values as written (quotes kept; see :func:`~ingest.sip.syntax.unquote`), None for a
    flag.
    ``uri_text`` is the URI exactly as received, for callers that must echo it byte for byte.
    """

    __slots__ = ("display_name", "uri", "params", "uri_text")

    def __init__(
        self,
        uri: SipUri,
        *,
        display_name: str | None = None,
        params: Params | None = None,
        uri_text: str | None = None,
    ) -> None:
        self.uri = uri
        self.display_name = display_name
        self.params: Params = {} if params is None else params
        self.uri_text = str(uri) if uri_text is None else uri_text

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter, or None."""
        return self.params.get("tag")

    def __str__(self) -> str:
        display = "" if self.display_name is None else quote(self.display_name) + " "
        return f"{display}<{self.uri}>{format_params(self.params)}"

    def __repr__(self) -> str:
        return f"NameAddr({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NameAddr):
            return NotImplemented
        return self.display_name == other.display_name and self.uri == other.uri and self.params == other.params

    __hash__ = None  # type: ignore[assignment]  # mutable


# The usual shape, ``sip[s]:[user@]host[:port][;params]`` with an ASCII user part and no password, IPv6
# reference or URI headers, matched in one step. Anything else goes through the general parser, which
# gives the same result for these shapes (tests/unit/test_sip_properties.py checks the two agree).
_USER_CLASS = "".join(re.escape(c) for c in map(chr, range(0x21, 0x7F)) if c not in '<>"@[]:')
_SIMPLE_SIP_URI = re.compile(
    rf"([sS][iI][pP][sS]?):(?:([{_USER_CLASS}]+)@)?([A-Za-z0-9._\-]+)(?::([0-9]{{1,5}}))?((?:;[^?@]*)?)"
)


def parse_uri(text: str) -> SipUri:
    """Parse a sip, sips or tel URI; anything else, or a second ``@``, raises :class:`SipParseError`."""
    simple = _SIMPLE_SIP_URI.fullmatch(text)
    if simple is not None:
        scheme, user, host, port_text, params_text = simple.groups()
        port = int(port_text) if port_text else None
        if port is None or 0 < port <= 65535:
            params = parse_params(params_text[1:], allow_quoted=False) if params_text else {}
            return SipUri(scheme.lower(), host, user=user, port=port, params=params)
    return _parse_uri(text)


def _parse_uri(text: str) -> SipUri:
    colon = text.find(":")
    if colon <= 0:
        raise SipParseError("URI without a scheme")
    scheme = text[:colon].lower()
    rest = text[colon + 1 :]
    if scheme == "tel":
        return _parse_tel(rest)
    if scheme not in _SIP_SCHEMES:
        raise SipParseError("unsupported URI scheme")
    user = password = None
    at = rest.find("@")
    if at >= 0:
        if rest.find("@", at + 1) >= 0:
            raise SipParseError("more than one '@' in URI")
        user, colon_sep, password_text = rest[:at].partition(":")
        _check_user_part(user)
        if colon_sep:
            _check_user_part(password_text, allow_empty=True)
            password = password_text
        rest = rest[at + 1 :]
    host, port, tail = _split_host_port(rest, "?;")
    params_text, question, headers_text = tail.partition("?")
    params = parse_params(params_text[1:], allow_quoted=False)
    headers: dict[str, str] = {}
    if question and headers_text:
        for item in headers_text.split("&"):
            name, _, value = item.partition("=")
            if not name or not value.isprintable() or not name.isprintable() or " " in item:
                raise SipParseError("bad URI header")
            headers[name] = value
    return SipUri(scheme, host, user=user, password=password, port=port, params=params, headers=headers)


def parse_host_port(text: str) -> tuple[str, int | None]:
    """Parse ``host[:port]`` (IPv6 in brackets); the whole text must be consumed."""
    host, port, tail = _split_host_port(text.strip(" \t"), "")
    if tail:
        raise SipParseError("text after host:port")
    return host, port


def parse_name_addr(text: str) -> NameAddr:
    """Parse a name-addr (``"Bob" <sip:bob@b.example>;tag=1``) or an addr-spec (``sip:bob@b.example;tag=1``).

    In the addr-spec form, everything after the first ``;`` is a header parameter (RFC 3261 20).
    """
    value = text.strip(" \t")
    if not value:
        raise SipParseError("empty address")
    display_name: str | None = None
    if value[0] == '"':
        end = quoted_string_end(value, 0)
        display_name = unquote(value[:end])
        lt = value.find("<", end)
        if lt < 0 or value[end:lt].strip(" \t"):
            raise SipParseError("quoted display name without <uri>")
    else:
        lt = value.find("<")
        semi = value.find(";")
        if lt >= 0 and (semi < 0 or lt < semi):
            display = value[:lt].strip(" \t")
            if display:
                if not display.isprintable() or not _DISPLAY_BAD.isdisjoint(display):
                    raise SipParseError("bad display name")
                display_name = display
        else:
            uri_text, _, params_text = value.partition(";")
            uri_text = uri_text.rstrip(" \t")
            return NameAddr(parse_uri(uri_text), params=parse_params(params_text), uri_text=uri_text)
    gt = value.find(">", lt)
    if gt < 0:
        raise SipParseError("'<' without '>'")
    uri_text = value[lt + 1 : gt].strip(" \t")
    tail = value[gt + 1 :].lstrip(" \t")
    if tail and tail[0] != ";":
        raise SipParseError("text after '>'")
    return NameAddr(parse_uri(uri_text), display_name=display_name, params=parse_params(tail[1:]), uri_text=uri_text)


def _check_user_part(text: str, *, allow_empty: bool = False) -> None:
    if not text and not allow_empty:
        raise SipParseError("empty user part")
    if not text.isprintable() or not _USER_BAD.isdisjoint(text):
        raise SipParseError("bad user part")


def _split_host_port(text: str, stops: str) -> tuple[str, int | None, str]:
    """Split ``host[:port]<tail>`` where the tail starts at the first character of ``stops``."""
    port_text: str | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise SipParseError("'[' without ']' in host")
        host = text[: close + 1]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise SipParseError("bad IPv6 reference") from exc
        rest = text[close + 1 :]
        end = _first_of(rest, stops)
        port_part, tail = rest[:end], rest[end:]
        if port_part:
            if port_part[0] != ":":
                raise SipParseError("text after IPv6 reference")
            port_text = port_part[1:]
    else:
        end = _first_of(text, stops)
        hostport, tail = text[:end], text[end:]
        host, colon, port_part = hostport.partition(":")
        if colon:
            port_text = port_part
        if not host or not _HOST_CHARS.issuperset(host):
            raise SipParseError("bad host")
    port = None
    if port_text is not None:
        if not (0 < len(port_text) <= 5 and port_text.isascii() and port_text.isdigit()):
            raise SipParseError("bad port")
        port = int(port_text)
        if port > 65535:
            raise SipParseError("port out of range")
    return host, port, tail


def _first_of(text: str, chars: str) -> int:
    """Index of the first character of ``text`` that is in ``chars``, or ``len(text)``."""
    end = len(text)
    for char in chars:
        at = text.find(char, 0, end)
        if at >= 0:
            end = at
    return end


def _parse_tel(rest: str) -> SipUri:
    number, _, params_text = rest.partition(";")
    _check_user_part(number)
    return SipUri("tel", "", user=number, params=parse_params(params_text, allow_quoted=False))
