"""Random SIP tokens: the right length, never repeated, fresh after a fork."""

from __future__ import annotations

import os

from ingest.sip.tags import random_hex


def test_lengths_and_no_repeats_across_pool_refills() -> None:
    tokens = [random_hex(5) for _ in range(5000)]  # 25,000 bytes: several refills of the pool
    assert all(len(t) == 10 and int(t, 16) >= 0 for t in tokens)
    assert len(set(tokens)) == len(tokens)
    assert len(random_hex(12)) == 24 and len(random_hex(5000)) == 10000


def test_a_forked_child_draws_other_bytes_than_its_parent() -> None:
    random_hex(5)  # the parent has a pool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next token and leave at once
        os.write(write, random_hex(16).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert len(child) == 32 and child != random_hex(16)
