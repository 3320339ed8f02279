"""Shared fixtures: tiny dataset trees in the official layouts, made by the MiniCity generator.

``tiny_gta5``, ``tiny_synthia`` and ``tiny_cityscapes`` are session-scoped and must not be
modified; tests that damage a tree take a private copy with ``copy_tree``. ``png`` offers PNG
writers for hand-made files (palette, 8-bit, and 16-bit written without any imaging library).
"""
from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import encode_png

from tests.slurm_cluster import slurm_cluster  # noqa: F401  (a session fixture: a real one-node Slurm)

TINY = dict(seed=0, height=32, width=64, n_source=6, n_target_train=6, n_target_val=6)


@pytest.fixture(scope="session")
def tiny_params():
    from udabench.minicity import MiniCityParams

    return MiniCityParams(**TINY)


@pytest.fixture(scope="session")
def tiny_gta5(tmp_path_factory, tiny_params) -> Path:
    from udabench.minicity import write_gta5

    root = tmp_path_factory.mktemp("tiny") / "gta5"
    write_gta5(root, tiny_params, tiny_params.n_source)
    return root


@pytest.fixture(scope="session")
def tiny_synthia(tmp_path_factory, tiny_params) -> Path:
    from udabench.minicity import write_synthia

    root = tmp_path_factory.mktemp("tiny") / "synthia"
    write_synthia(root, tiny_params, tiny_params.n_source)
    return root


@pytest.fixture(scope="session")
def tiny_cityscapes(tmp_path_factory, tiny_params) -> Path:
    from udabench.minicity import write_cityscapes

    root = tmp_path_factory.mktemp("tiny") / "cityscapes"
    write_cityscapes(root, tiny_params, tiny_params.n_target_train, tiny_params.n_target_val)
    return root


@pytest.fixture
def copy_tree(tmp_path):
    """copy_tree(src) -> a private, modifiable copy of a dataset tree."""

    def copy(src: Path) -> Path:
        n = len(list(tmp_path.glob(f"copy*_{src.name}")))
        dst = tmp_path / f"copy{n or ''}_{src.name}"
        shutil.copytree(src, dst)
        return dst

    return copy


def _png16_rgb(path: Path, arr: np.ndarray) -> None:
    """A 16-bit 3-channel PNG written by hand (Pillow cannot write them)."""
    h, w, _ = arr.shape
    rows = arr.astype(">u2").reshape(h, w * 3).tobytes()
    stride = w * 6
    raw = b"".join(b"\x00" + rows[i * stride:(i + 1) * stride] for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def _palette(path: Path, arr: np.ndarray) -> None:
    img = Image.fromarray(arr.astype(np.uint8), mode="P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _u8(path: Path, arr: np.ndarray) -> None:
    """8-bit grey ([H,W]) or RGB ([H,W,3]) via torchvision."""
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.uint8))
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(t).numpy().tobytes())


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip_byte(path: Path) -> None:
    """Damage one byte in the middle of the pixel data (the CRC no longer matches)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="session")
def png():
    return SimpleNamespace(rgb16=_png16_rgb, palette=_palette, u8=_u8, truncate=_truncate,
                           flip_byte=_flip_byte)


@pytest.fixture()
def one_torch_thread():
    """Tiny convolutions run fastest on one thread (and do not thrash a busy CI machine)."""
    from udabench.engine.devices import torch_threads

    with torch_threads(1):
        yield
