"""The prepared HMAC-SHA256 gives exactly what the standard library's HMAC gives."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from processors.registrar.sha256mac import Sha256Mac, mac_for


@given(key=st.binary(max_size=200), message=st.binary(max_size=500))
def test_matches_hmac_for_any_key_and_message(key: bytes, message: bytes) -> None:
    assert Sha256Mac(key).hexdigest(message) == hmac.new(key, message, hashlib.sha256).hexdigest()


def test_keys_around_the_block_size_and_reuse() -> None:
    for size in (0, 1, 63, 64, 65, 128):
        key = bytes(range(size % 256)) * (size // 256 + 1)
        key = key[:size]
        mac = Sha256Mac(key)
        for message in (b"", b"1700000000:example.com", b"x" * 1000):
            assert mac.digest(message) == hmac.digest(key, message, "sha256")  # the prepared state is not consumed


def test_one_prepared_mac_per_secret_and_no_key_in_repr() -> None:
    assert mac_for("s3cret") is mac_for("s3cret")
    assert "s3cret" not in repr(mac_for("s3cret"))
