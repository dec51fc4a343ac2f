"""HMAC-SHA256 under a fixed key, with the key's padded states hashed once (RFC 2104).

The nonces and the webhook signature are MACs under a key that never changes while the process
runs. `hmac.digest(key, msg, "sha256")` looks the digest up and pads the key on every call; here
each MAC is two copies of prepared SHA-256 states and two updates.
"""

from __future__ import annotations

import functools
import hashlib

_BLOCK = 64  # SHA-256 block size in bytes


class Sha256Mac:
    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def __repr__(self) -> str:
        return "Sha256Mac(<key>)"

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def hexdigest(self, message: bytes) -> str:
        return self.digest(message).hex()


@functools.lru_cache(maxsize=1024)
def mac_for(secret: str) -> Sha256Mac:
    """The prepared MAC of an account's webhook secret (a few accounts, many calls each)."""
    return Sha256Mac(secret.encode())
