"""`clients.password` encryption, the jambonz api-server way (SPEC 2.7).

The stored value is JSON `{"iv":"<32 hex>","content":"<hex>"}`. The key is the first 32
characters of base64(SHA-256(secret)), used as 32 bytes of ASCII; the secret is
ENCRYPTION_SECRET, or JWT_SECRET when that is unset. The cipher is AES-256-CBC with PKCS#7
padding, or AES-256-CTR (no padding) when LEGACY_CRYPTO is set.
"""

from __future__ import annotations

import base64
import hashlib
import os

import msgspec
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_BLOCK_BITS = 128
_IV_BYTES = 16


class ClientPasswordError(ValueError):
    """A stored password that cannot be decrypted (bad JSON, hex, IV, padding or key)."""


class _Stored(msgspec.Struct, frozen=True):
    iv: str
    content: str


_decoder = msgspec.json.Decoder(_Stored)


def derive_key(secret: str) -> bytes:
    """base64(SHA-256(secret)), first 32 characters, as the AES-256 key bytes."""
    digest = hashlib.sha256(secret.encode()).digest()
    return base64.b64encode(digest)[:32]


class ClientPasswordCipher:
    """Encrypts and decrypts `clients.password` values with one key."""

    __slots__ = ("_key", "_legacy_ctr")

    def __init__(self, secret: str, *, legacy_crypto: bool = False) -> None:
        if not secret:
            raise ValueError("ENCRYPTION_SECRET (or JWT_SECRET) is required")
        self._key = derive_key(secret)
        self._legacy_ctr = legacy_crypto

    def __repr__(self) -> str:
        return f"ClientPasswordCipher(mode={'ctr' if self._legacy_ctr else 'cbc'})"

    def _cipher(self, iv: bytes) -> Cipher[modes.CBC] | Cipher[modes.CTR]:
        if self._legacy_ctr:
            return Cipher(algorithms.AES(self._key), modes.CTR(iv))
        return Cipher(algorithms.AES(self._key), modes.CBC(iv))

    def encrypt(self, password: str, iv: bytes | None = None) -> str:
        """The JSON text the api-server stores; a random IV unless one is given (tests)."""
        iv = os.urandom(_IV_BYTES) if iv is None else iv
        if len(iv) != _IV_BYTES:
            raise ValueError("the IV must be 16 bytes")
        data = password.encode()
        if not self._legacy_ctr:
            padder = padding.PKCS7(_BLOCK_BITS).padder()
            data = padder.update(data) + padder.finalize()
        encryptor = self._cipher(iv).encryptor()
        content = encryptor.update(data) + encryptor.finalize()
        return msgspec.json.encode(_Stored(iv=iv.hex(), content=content.hex())).decode()

    def decrypt(self, stored: str) -> str:
        try:
            value = _decoder.decode(stored)
            iv = bytes.fromhex(value.iv)
            content = bytes.fromhex(value.content)
            decryptor = self._cipher(iv).decryptor()
            data = decryptor.update(content) + decryptor.finalize()
            if not self._legacy_ctr:
                unpadder = padding.PKCS7(_BLOCK_BITS).unpadder()
                data = unpadder.update(data) + unpadder.finalize()
            return data.decode()
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            # ValueError covers bad hex, a wrong IV length, bad padding and bad UTF-8. The
            # cause is dropped on purpose: a UnicodeDecodeError would quote plaintext bytes.
            raise ClientPasswordError(f"cannot decrypt a client password: {type(exc).__name__}") from None
