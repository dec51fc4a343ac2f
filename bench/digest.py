"""RFC 2617 digest arithmetic and the bench's users: u000000 to u999999, one shared password.

Used by the webhook (to verify) and by the probe (to answer a challenge); written here once and
independently of the service's own implementation, so the bench checks the service too.
"""

from __future__ import annotations

import hashlib
import re
import secrets

REALM = "bench.local"
USER_COUNT = 1_000_000
# The probe takes its users from the top of the range, sipp from the bottom.
PROBE_FIRST_USER = 900_000
_USER = re.compile(r"u\d{6}")
_PARAM = re.compile(r'([A-Za-z-]+)=(?:"([^"]*)"|([^,\s]+))')


def user_name(index: int) -> str:
    if not 0 <= index < USER_COUNT:
        raise ValueError(f"bench users are u000000 to u{USER_COUNT - 1:06d}, not index {index}")
    return f"u{index:06d}"


def is_bench_user(name: str) -> bool:
    return _USER.fullmatch(name) is not None


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest_response(
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
    ha1 = md5_hex(f"{username}:{realm}:{password}")
    ha2 = md5_hex(f"{method}:{uri}")
    if qop:
        return md5_hex(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return md5_hex(f"{ha1}:{nonce}:{ha2}")


def challenge_params(header_value: str) -> dict[str, str]:
    """`Digest realm="x", nonce="y", qop="auth"` → {"realm": "x", "nonce": "y", "qop": "auth"}."""
    scheme, _, rest = header_value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise ValueError(f"not a digest challenge: {header_value!r}")
    return {name.lower(): quoted if quoted else bare for name, quoted, bare in _PARAM.findall(rest)}


def authorization(challenge_header: str, *, username: str, password: str, uri: str, method: str = "REGISTER") -> str:
    """The `Authorization` header value answering a `WWW-Authenticate: Digest ...` challenge, as a phone
    writes it (qop=auth when offered, a fresh cnonce, nc 1, the opaque echoed)."""
    challenge = challenge_params(challenge_header)
    qop = "auth" if "auth" in challenge.get("qop", "").split(",") else None
    cnonce, nc = secrets.token_hex(8), "00000001"
    response = digest_response(
        username=username,
        realm=challenge["realm"],
        password=password,
        method=method,
        uri=uri,
        nonce=challenge["nonce"],
        qop=qop,
        nc=nc,
        cnonce=cnonce,
    )
    value = (
        f'Digest username="{username}", realm="{challenge["realm"]}", nonce="{challenge["nonce"]}", '
        f'uri="{uri}", response="{response}", algorithm=MD5'
    )
    if qop:
        value += f', qop={qop}, nc={nc}, cnonce="{cnonce}"'
    if "opaque" in challenge:
        value += f', opaque="{challenge["opaque"]}"'
    return value
