"""One atomic file writer for the whole package: a file is either whole or absent.

Data goes to a temporary file in the same folder (a dot-name ending in .tmp, which no loader
globs), optionally fsynced, then ``os.replace``s the target. The file gets the ordinary
permissions of a new file (umask applies), unlike ``tempfile.mkstemp``'s 0600.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically; ``durable`` fsyncs before the rename (checkpoints)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    try:
        fh = open(tmp, "wb")
    except FileNotFoundError:  # first file of a folder (a mkdir per file would cost more)
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(tmp, "wb")
    try:
        with fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
