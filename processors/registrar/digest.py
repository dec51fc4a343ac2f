"""RFC 2617 digest responses as jambonz computes them (SPEC 2.7): MD5 and qop=auth only."""

from __future__ import annotations

import hashlib
import hmac

from events import DigestCredentials

MANDATORY_FIELDS = ("username", "realm", "nonce", "uri", "response")


def missing_fields(credentials: DigestCredentials) -> tuple[str, ...]:
    """The mandatory Authorization fields that are absent or empty (jambonz answers 500)."""
    return tuple(name for name in MANDATORY_FIELDS if not getattr(credentials, name))


def _md5_hex(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def compute_response(
    *,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """MD5(HA1:nonce[:nc:cnonce][:qop]:HA2) with HA1 = MD5(user:realm:password), HA2 = MD5(method:uri).

    `nc` and `cnonce` enter only when a cnonce is present, `qop` only when present, exactly
    like jambonz (RFC 2069 style when neither is sent).
    """
    ha1 = _md5_hex(f"{username}:{realm}:{password}")
    ha2 = _md5_hex(f"{method}:{uri}")
    parts = [ha1, nonce]
    if cnonce:
        parts += [nc or "", cnonce]
    if qop:
        parts.append(qop)
    parts.append(ha2)
    return _md5_hex(":".join(parts))


def verify_response(credentials: DigestCredentials, password: str, method: str = "REGISTER") -> bool:
    """True when the client's response matches; compared in constant time.

    The realm is the one in the client's Authorization header, as in jambonz.
    """
    if missing_fields(credentials):
        return False
    expected = compute_response(
        username=credentials.username or "",
        realm=credentials.realm or "",
        password=password,
        method=method,
        uri=credentials.uri or "",
        nonce=credentials.nonce or "",
        qop=credentials.qop,
        nc=credentials.nc,
        cnonce=credentials.cnonce,
    )
    return hmac.compare_digest(expected.encode(), (credentials.response or "").encode())
