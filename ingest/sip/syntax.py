"""RFC 3261 lexical rules shared by the header and URI parsers: token, quoted-string, parameters, lists."""

from __future__ import annotations

import string

from ingest.sip.errors import SipParseError

__all__ = [
    "TOKEN_CHARS",
    "Params",
    "format_params",
    "is_token",
    "parse_params",
    "quote",
    "quoted_string_end",
    "split_comma_list",
    "split_quoted",
    "unquote",
]

# A parameter list in source order: lower-cased name -> value as written (quotes kept), None for a flag.
Params = dict[str, str | None]

TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-.!%*_+`'~")
# Characters that may never appear in an unquoted parameter name or value.
_PARAM_NAME_BAD = frozenset(' \t;=?,"<>@\\')
_PARAM_VALUE_BAD = frozenset(' \t;?,"<>\\')


def is_token(text: str) -> bool:
    """True when ``text`` is a non-empty RFC 3261 token."""
    return bool(text) and TOKEN_CHARS.issuperset(text)


def quoted_string_end(text: str, start: int) -> int:
    """Index just past the quoted-string that opens at ``text[start] == '"'`` (backslash escapes honoured)."""
    i = start + 1
    while True:
        quote_at = text.find('"', i)
        if quote_at < 0:
            raise SipParseError("unterminated quoted string")
        slash_at = text.find("\\", i, quote_at)
        if slash_at < 0:
            return quote_at + 1
        if slash_at + 1 >= len(text):
            raise SipParseError("unterminated quoted string")
        i = slash_at + 2


def unquote(value: str) -> str:
    """The content of a quoted-string (``"a\\"b"`` -> ``a"b``); a value without quotes is returned as is."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    inner = value[1:-1]
    if "\\" not in inner:
        return inner
    out: list[str] = []
    i = 0
    while i < len(inner):
        char = inner[i]
        if char == "\\" and i + 1 < len(inner):
            i += 1
            char = inner[i]
        out.append(char)
        i += 1
    return "".join(out)


def quote(text: str) -> str:
    """``text`` as a quoted-string, escaping backslash and double quote."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_quoted(text: str, separator: str) -> list[str]:
    """Split ``text`` at ``separator`` except inside quoted-strings."""
    if '"' not in text:
        return text.split(separator)
    parts: list[str] = []
    begin = i = 0
    while True:
        sep_at = text.find(separator, i)
        quote_at = text.find('"', i)
        if quote_at >= 0 and (sep_at < 0 or quote_at < sep_at):
            i = quoted_string_end(text, quote_at)
            continue
        if sep_at < 0:
            parts.append(text[begin:])
            return parts
        parts.append(text[begin:sep_at])
        begin = i = sep_at + 1


def split_comma_list(value: str) -> list[str]:
    """Elements of a comma-separated header value; commas inside quotes or ``<...>`` do not split.

    Elements are stripped and empty elements dropped (RFC 7230 7).
    """
    if '"' not in value and "<" not in value:
        return [part for part in (piece.strip(" \t") for piece in value.split(",")) if part]
    parts: list[str] = []
    begin = i = 0
    length = len(value)
    while i < length:
        char = value[i]
        if char == '"':
            i = quoted_string_end(value, i)
            continue
        if char == "<":
            close = value.find(">", i)
            if close < 0:
                raise SipParseError("'<' without '>'")
            i = close + 1
            continue
        if char == ",":
            parts.append(value[begin:i])
            begin = i + 1
        i += 1
    parts.append(value[begin:])
    return [part for part in (piece.strip(" \t") for piece in parts) if part]


def parse_params(text: str, *, allow_quoted: bool = True) -> Params:
    """Parse ``name[=value]`` pairs separated by ``;`` (the text after the first ``;``).

    Names are lower-cased, values kept as written (a quoted value keeps its quotes), flags map to None.
    Empty segments (``;;`` or a trailing ``;``) are ignored; a repeated name keeps its last value.
    """
    params: Params = {}
    if not text:
        return params
    segments = split_quoted(text, ";") if allow_quoted else text.split(";")
    for segment in segments:
        name, sep, value = segment.partition("=")
        name = name.strip(" \t")
        if not name:
            if sep:
                raise SipParseError("parameter without a name")
            continue
        if not name.isprintable() or not _PARAM_NAME_BAD.isdisjoint(name):
            raise SipParseError("bad parameter name")
        if not sep:
            params[name.lower()] = None
            continue
        value = value.strip(" \t")
        if value[:1] == '"' and allow_quoted:
            if quoted_string_end(value, 0) != len(value):
                raise SipParseError("text after a quoted parameter value")
        elif not value.isprintable() or not _PARAM_VALUE_BAD.isdisjoint(value):
            raise SipParseError("bad parameter value")
        params[name.lower()] = value
    return params


def format_params(params: Params) -> str:
    """``;name=value;flag`` for a parameter list (the inverse of :func:`parse_params`)."""
    return "".join(f";{name}" if value is None else f";{name}={value}" for name, value in params.items())
