"""Random tokens for To/From tags, branches and Call-IDs: kernel randomness, drawn in bulk.

RFC 3261 19.3 wants tags globally unique and cryptographically random (at least 32 bits). Asking
the kernel for 5 bytes per answer cost a `getrandom` call per SIP transaction, as much as the
`recvmsg` that brought the request; here one call fills a pool that serves hundreds of tokens.
"""

from __future__ import annotations

import hashlib
import os

_POOL_BYTES = 4096


class _Pool:
    __slots__ = ("data", "position")

    def __init__(self) -> None:
        self.data = b""
        self.position = 0

    def forget(self) -> None:
        self.data = b""
        self.position = 0


_pool = _Pool()
os.register_at_fork(after_in_child=_pool.forget)  # a forked child must never reuse its parent's bytes


def random_hex(size: int) -> str:
    """`size` random bytes as hex (2 × size characters)."""
    pool = _pool
    start = pool.position
    if start + size > len(pool.data):
        pool.data = os.urandom(max(_POOL_BYTES, size))
        start = 0
    pool.position = start + size
    return pool.data[start : start + size].hex()


def stateless_to_tag(tag_key: bytes, via: str, call_id: str, from_value: str, cseq: str) -> str:
    """The To tag of a stateless answer: a keyed hash of the request's identity (RFC 3261 8.2.7).

    A retransmission of the same request gets the same tag, with no state kept between the two.
    """
    identity = f"{via}|{call_id}|{from_value}|{cseq}"
    return hashlib.blake2s(identity.encode(errors="surrogateescape"), key=tag_key, digest_size=5).hexdigest()
