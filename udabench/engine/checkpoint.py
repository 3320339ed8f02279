"""Atomic, checksummed checkpoints and the RNG state they carry.

File format: one ASCII line ``udabench-ckpt sha256=<hex>\\n`` followed by a ``torch.save`` payload.
The payload is written to a temporary file, fsynced, then renamed over the old checkpoint, so a
crash or a full disk never leaves a half-written file under the real name, and the checksum
catches truncation and bit flips. Loading always uses ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udabench.errors import UserError
from udabench.fileio import atomic_write_bytes  # noqa: F401  (re-exported for rundir)

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


def rng_state() -> dict[str, Any]:
    """Every global RNG a run may touch, in a form weights_only loading accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
