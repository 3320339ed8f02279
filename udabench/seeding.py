"""Stable seeds derived from any parts (run seed, domain, epoch, ...): the same on every process,
machine and Python version (Python's ``hash`` is salted per process)."""
from __future__ import annotations

import hashlib


def sample_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
