"""Secrets that must cross a stream (a carrier password on its way to the SIP edge), sealed.

AES-256-GCM with a key derived from ENCRYPTION_SECRET (SHA-256 of a label and the secret), a random
96-bit nonce per seal, base64url of nonce + ciphertext. Every process of a cluster shares
ENCRYPTION_SECRET (jambonz requires it), so whichever edge sends the request can open it; a reader of
the streams without the secret cannot.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_LABEL = b"sbc-sidecar sealed secret v1\x00"
_NONCE_BYTES = 12


class SealError(ValueError):
    """A sealed value that does not open with this key (another secret, or damaged)."""


class Sealer:
    """Seals and opens short secrets with one key."""

    def __init__(self, secret: str) -> None:
        self._aead = AESGCM(hashlib.sha256(_LABEL + secret.encode()).digest())

    def __repr__(self) -> str:
        return "Sealer(***)"

    def seal(self, value: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        return base64.urlsafe_b64encode(nonce + self._aead.encrypt(nonce, value.encode(), None)).decode()

    def open(self, sealed: str) -> str:
        try:
            raw = base64.urlsafe_b64decode(sealed.encode())
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], None).decode()
        except (ValueError, InvalidTag) as exc:
            raise SealError("sealed value does not open with this ENCRYPTION_SECRET") from exc
