"""Digest authentication header values: parsing credentials and challenges, building challenges.

Two parsers on purpose: :func:`parse_digest_params` reads the RFC 2617 / RFC 8760 grammar, and
:func:`parse_digest_credentials_jambonz` reproduces what jambonz's digest middleware extracts (SPEC.md 2.5),
quirks included, for the payload of the registration webhook.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ingest.sip.errors import SipParseError
from ingest.sip.syntax import is_token, quote, quoted_string_end, unquote

__all__ = [
    "JAMBONZ_DIGEST_FIELDS",
    "JAMBONZ_MANDATORY_FIELDS",
    "build_www_authenticate",
    "format_digest",
    "parse_digest_credentials_jambonz",
    "parse_digest_params",
]

JAMBONZ_DIGEST_FIELDS = (
    "username",
    "realm",
    "nonce",
    "uri",
    "algorithm",
    "response",
    "qop",
    "nc",
    "cnonce",
    "opaque",
)
JAMBONZ_MANDATORY_FIELDS = ("username", "realm", "nonce", "uri", "response")
# Directives written without quotes in a challenge (RFC 2617 3.2.1); everything else is a quoted-string.
CHALLENGE_BARE_NAMES = frozenset({"algorithm", "stale"})


def parse_digest_params(value: str) -> dict[str, str]:
    """Parse ``Digest name=value, name="value", ...`` (Authorization, Proxy-Authorization, WWW-Authenticate).

    Returns the parameters in source order, names lower-cased, quoted values unquoted. A scheme other than
    Digest, a repeated name or a syntax error raises :class:`SipParseError`.
    """
    text = value.strip(" \t")
    pieces = text.split(None, 1)
    if not pieces or pieces[0].lower() != "digest":
        raise SipParseError("not a Digest header")
    rest = pieces[1] if len(pieces) == 2 else ""
    params: dict[str, str] = {}
    i = 0
    length = len(rest)
    while True:
        while i < length and rest[i] in " \t,":
            i += 1
        if i >= length:
            return params
        eq = rest.find("=", i)
        if eq < 0:
            raise SipParseError("digest parameter without '='")
        name = rest[i:eq].strip(" \t").lower()
        if not is_token(name):
            raise SipParseError("bad digest parameter name")
        if name in params:
            raise SipParseError("repeated digest parameter")
        i = eq + 1
        while i < length and rest[i] in " \t":
            i += 1
        if i < length and rest[i] == '"':
            end = quoted_string_end(rest, i)
            params[name] = unquote(rest[i:end])
            i = end
        else:
            comma = rest.find(",", i)
            end = length if comma < 0 else comma
            token = rest[i:end].strip(" \t")
            if not token or not token.isprintable() or " " in token or '"' in token:
                raise SipParseError("bad digest parameter value")
            params[name] = token
            i = end
        while i < length and rest[i] in " \t":
            i += 1
        if i < length and rest[i] != ",":
            raise SipParseError("digest parameters not separated by ','")


def format_digest(params: Mapping[str, str], bare_names: frozenset[str] = CHALLENGE_BARE_NAMES) -> str:
    """``Digest a="x", b=y`` from ordered parameters; names in ``bare_names`` are written without quotes."""
    items = (f"{name}={value}" if name in bare_names else f"{name}={quote(value)}" for name, value in params.items())
    return "Digest " + ", ".join(items)


def build_www_authenticate(
    realm: str,
    nonce: str,
    *,
    algorithm: str = "MD5",
    qop: str | None = "auth",
    opaque: str | None = None,
    stale: bool = False,
) -> str:
    """A WWW-Authenticate value; with the defaults it is byte-identical to jambonz's challenge (SPEC.md 2.5):

    ``Digest realm="<realm>", algorithm=MD5, qop="auth", nonce="<nonce>"``
    """
    params = {"realm": realm, "algorithm": algorithm}
    if qop is not None:
        params["qop"] = qop
    params["nonce"] = nonce
    if opaque is not None:
        params["opaque"] = opaque
    if stale:
        params["stale"] = "true"
    return format_digest(params)


# JavaScript's `.` (anything but a line terminator) and `\s`, so the quirks match byte for byte.
_JS_DOT = "[^\n\r\u2028\u2029]"
_JS_SPACE = "[\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
_JS_SPACE_OR_COMMA = _JS_SPACE[:-1] + ",]"
_JAMBONZ_FIELD = {name: re.compile(f'{_JS_SPACE_OR_COMMA}{name}="?({_JS_DOT}+?)[",]') for name in JAMBONZ_DIGEST_FIELDS}
_JAMBONZ_LOOKUPS = tuple((name, f"{name}=", pattern) for name, pattern in _JAMBONZ_FIELD.items())
_JAMBONZ_TRAILING = {name: re.compile(f"{name}=({_JS_DOT}*)\\Z") for name in ("nc", "qop")}


def _first_match(pattern: re.Pattern[str], value: str, needle: str) -> re.Match[str] | None:
    """``pattern.search(value)`` for a field pattern, tried only where its ``name=`` (`needle`) occurs (a search
    would scan every position with the leading character class; the leftmost occurrence that matches is the
    same match).
    """
    at = value.find(needle, 1)
    while at >= 0:
        match = pattern.match(value, at - 1)
        if match:
            return match
        at = value.find(needle, at + 1)
    return None


def parse_digest_credentials_jambonz(value: str, *, require_mandatory: bool = True) -> dict[str, str]:
    """The Authorization fields exactly as jambonz extracts them (SPEC.md 2.5), quirks kept on purpose.

    - a field counts only after a comma or whitespace (so ``cnonce`` never matches as ``nonce``);
    - quotes are optional and the value ends at the next ``"`` or ``,``; a lone ``"`` becomes ``""``;
    - a field that is last and unquoted has no delimiter and is lost, except ``nc`` and ``qop``, which fall
      back to "everything after the first ``nc=`` / ``qop=`` to the end";
    - ``scheme`` is always ``"digest"`` and ``algorithm`` defaults to ``"MD5"``.

    Keys appear in jambonz's insertion order: scheme, the fields found (in the order of
    :data:`JAMBONZ_DIGEST_FIELDS`), then a defaulted algorithm, then the nc / qop fallbacks.
    With ``require_mandatory`` a missing or empty username, realm, nonce, uri or response raises
    :class:`SipParseError` (jambonz throws there and answers 500).
    """
    fields = {"scheme": "digest"}
    for name, needle, pattern in _JAMBONZ_LOOKUPS:
        match = _first_match(pattern, value, needle)
        if match:
            found = match.group(1)
            fields[name] = "" if found == '"' else found
    if not fields.get("algorithm"):
        fields["algorithm"] = "MD5"
    for name, pattern in _JAMBONZ_TRAILING.items():
        if not fields.get(name):
            match = pattern.search(value)
            if match:
                fields[name] = match.group(1)
    if require_mandatory:
        for name in JAMBONZ_MANDATORY_FIELDS:
            if not fields.get(name):
                raise SipParseError(f"missing authorization component: {name}")
    return fields
