"""Atomic, checksummed checkpoint files (a core module: the engine and the method kit use it).

File format: one ASCII line ``udabench-ckpt sha256=<hex>\\n`` followed by a ``torch.save`` payload.
The payload is written to a temporary file, fsynced, then renamed over the old checkpoint, so a
crash or a full disk never leaves a half-written file under the real name, and the checksum
catches truncation and bit flips. Loading always uses ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from udabench.errors import UserError
from udabench.fileio import atomic_write_bytes

MAGIC = b"udabench-ckpt sha256="


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    atomic_write_bytes(path, MAGIC + digest + b"\n" + payload, durable=True)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify a checkpoint; a corrupt or foreign file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    if data.startswith(MAGIC):
        header, _, payload = data.partition(b"\n")
        expected = header[len(MAGIC) :].decode("ascii", "replace")
        if hashlib.sha256(payload).hexdigest() != expected:
            raise UserError(
                f"checkpoint {path} is corrupt (checksum mismatch: truncated or altered); "
                "resume from an earlier run or start again"
            )
    else:
        payload = data  # a plain torch file (e.g. weights from elsewhere): no checksum to verify
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle refusals and format errors alike
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"checkpoint {path} cannot be loaded safely (weights_only=True refused it: {first[:160]})"
        ) from None


def file_checksum(path: Path) -> str:
    """sha256 of a file's bytes (recorded when a run starts from another run's weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
