"""Signed, expiring digest nonces: the registrar issues them statelessly and recognises its own.

Deliberate change (DESIGN 7, SPEC 2.5): jambonz accepts any nonce and never checks it. Here a
nonce is `<issue time, 10 decimal digits><HMAC-SHA256(key, "<issue time>:<realm>"), first 16 hex>`
(26 characters of [0-9a-f], so longer than jambonz's 15 digits and just as opaque to a phone).
Any registrar that shares ENCRYPTION_SECRET verifies it without shared state, so several SBCs and
processor replicas agree. A nonce that is forged, malformed, issued for another realm or older
than the TTL (SIDECAR_NONCE_TTL_S, default 300 s) is *stale*: the phone gets a fresh 401 with
`stale=true` and the webhook is never called with it.
"""

from __future__ import annotations

import enum
import hashlib
import hmac

from processors.registrar.sha256mac import Sha256Mac

_KEY_LABEL = b"sbc-sidecar digest nonce v1"
_TIME_DIGITS = 10
_MAC_HEX = 16
NONCE_LENGTH = _TIME_DIGITS + _MAC_HEX

# Several SBCs share the key; tolerate this much clock skew for a nonce "issued in the future".
MAX_CLOCK_SKEW_S = 5


class NonceCheck(enum.Enum):
    OK = "ok"
    STALE = "stale"


class NonceSigner:
    """Issues and verifies nonces for a realm. Pure: the caller passes the time."""

    __slots__ = ("_mac_of", "_ttl_s")

    def __init__(self, secret: str, ttl_s: int = 300) -> None:
        if not secret:
            raise ValueError("the nonce key needs a non-empty secret")
        if ttl_s <= 0:
            raise ValueError("the nonce TTL must be positive")
        # A key of its own, derived from the secret, so nonces never reveal anything about
        # the AES key that protects `clients.password`.
        self._mac_of = Sha256Mac(hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest())
        self._ttl_s = ttl_s

    def __repr__(self) -> str:
        return f"NonceSigner(ttl_s={self._ttl_s})"

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    def issue(self, realm: str, now_s: float) -> str:
        issued = f"{int(now_s):0{_TIME_DIGITS}d}"
        return issued + self._mac(issued, realm)

    def verify(self, nonce: str, realm: str, now_s: float) -> NonceCheck:
        if len(nonce) != NONCE_LENGTH:
            return NonceCheck.STALE
        issued = nonce[:_TIME_DIGITS]
        if not (issued.isascii() and issued.isdigit()):
            return NonceCheck.STALE
        if not hmac.compare_digest(nonce[_TIME_DIGITS:], self._mac(issued, realm)):
            return NonceCheck.STALE
        age_s = int(now_s) - int(issued)
        if age_s > self._ttl_s or age_s < -MAX_CLOCK_SKEW_S:
            return NonceCheck.STALE
        return NonceCheck.OK

    def _mac(self, issued: str, realm: str) -> str:
        return self._mac_of.hexdigest(f"{issued}:{realm}".encode())[:_MAC_HEX]
