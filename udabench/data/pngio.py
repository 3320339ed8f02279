"""PNG reading with torchvision.io, made safe against corrupt files, and atomic PNG writing.

torchvision's ``decode_png`` crashes the whole process (segfault) when libpng reports an error such
as a CRC mismatch, so every file is walked chunk by chunk (lengths, CRCs, IHDR) in Python before
it reaches libpng. The walk costs about a tenth of the decode. ``strict=True`` additionally inflates
the image data and checks its length, which catches the rare damage a CRC cannot see (a file
written corrupt); verify and prepare use it, the training loader does not (it doubles the cost).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_png, encode_png, read_file

from udabench.fileio import atomic_write_bytes  # noqa: F401  (re-exported)
from udabench.errors import DataError

Buffer = Union[bytes, memoryview, np.ndarray]  # anything struct and zlib can read
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types (IHDR byte 9) and their channel counts.
COLOR_TYPES = {0: ("gray", 1), 2: ("rgb", 3), 3: ("palette", 1), 4: ("gray+alpha", 2), 6: ("rgba", 4)}


@dataclass(frozen=True)
class PngInfo:
    """What the IHDR chunk says, without decoding pixels."""

    width: int
    height: int
    bit_depth: int
    color_type: int

    @property
    def mode(self) -> str:
        return COLOR_TYPES.get(self.color_type, ("unknown", 0))[0]

    @property
    def channels(self) -> int:
        return COLOR_TYPES.get(self.color_type, ("unknown", 0))[1]

    def describe(self) -> str:
        return f"{self.mode} {self.bit_depth}-bit"


class CorruptPNGError(DataError):
    """A PNG that cannot be decoded (bad signature, CRC, truncation, bad compressed data)."""


def _corrupt(path: Path, why: str) -> DataError:
    return CorruptPNGError(f"corrupt or truncated PNG {path}: {why}; re-extract or remove this file")


def _header(data: Buffer, path: Path) -> PngInfo:
    if len(data) < 33 or bytes(data[:8]) != PNG_SIGNATURE:
        raise _corrupt(path, "not a PNG file (bad signature)")
    length, ctype = struct.unpack_from(">I4s", data, 8)
    if ctype != b"IHDR" or length != 13:
        raise _corrupt(path, "first chunk is not IHDR")
    width, height, depth, color = struct.unpack_from(">IIBB", data, 16)
    if width == 0 or height == 0 or color not in COLOR_TYPES:
        raise _corrupt(path, f"invalid header (size {width}x{height}, colour type {color})")
    return PngInfo(width, height, depth, color)


def read_png_info(path: Path) -> PngInfo:
    """Size, bit depth and colour type from the first 33 bytes (no decoding)."""
    path = Path(path)
    with open(path, "rb") as fh:
        return _header(fh.read(33), path)


def check_png(data: Buffer, path: Path, strict: bool = False) -> PngInfo:
    """Walk every chunk (length and CRC) so that libpng never sees a damaged file.

    Raises DataError naming ``path``; with ``strict`` also inflates IDAT and checks its size.
    """
    info = _header(data, path)
    view = memoryview(data)
    pos, n, seen_idat, seen_end = 8, len(data), False, False
    inflater = zlib.decompressobj() if strict else None
    inflated = 0
    while pos + 12 <= n:
        length, ctype = struct.unpack_from(">I4s", data, pos)
        end = pos + 8 + length
        if end + 4 > n:
            raise _corrupt(path, f"chunk {ctype!r} at byte {pos} runs past the end of the file")
        (crc,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(view[pos + 4 : end]) != crc:
            raise _corrupt(path, f"CRC mismatch in chunk {ctype!r} at byte {pos}")
        if ctype == b"IDAT":
            seen_idat = True
            if inflater is not None:
                try:
                    inflated += len(inflater.decompress(view[pos + 8 : end]))
                except zlib.error as exc:
                    raise _corrupt(path, f"bad compressed data ({exc})") from None
        pos = end + 4
        if ctype == b"IEND":
            seen_end = True
            break
    if not seen_idat:
        raise _corrupt(path, "no image data (IDAT) found, file truncated")
    if strict:
        if not seen_end:
            raise _corrupt(path, "no IEND chunk, file truncated")
        interlaced = data[28] != 0
        bits_per_row = info.width * info.channels * info.bit_depth
        expected = info.height * (1 + (bits_per_row + 7) // 8)
        if not interlaced and inflated != expected:
            raise _corrupt(path, f"image data inflates to {inflated} bytes, expected {expected}")
    return info


def read_png(path: Path, mode: ImageReadMode = ImageReadMode.UNCHANGED, strict: bool = False
             ) -> torch.Tensor:
    """Decode a PNG to a CHW tensor (uint8, or uint16 for 16-bit files read UNCHANGED).

    Palette PNGs read UNCHANGED give the palette indices. A missing, corrupt or truncated file
    raises DataError naming it.
    """
    path = Path(path)
    try:
        # read_file hands the bytes to decode_png without a copy; numpy gives the walk a buffer.
        data = read_file(str(path))
    except RuntimeError as exc:
        if not path.exists():
            raise DataError(f"missing file {path}") from None
        raise DataError(f"cannot read {path}: {str(exc).splitlines()[-1]}") from None
    check_png(data.numpy(), path, strict=strict)
    try:
        return decode_png(data, mode)
    except RuntimeError as exc:
        raise _corrupt(path, str(exc).splitlines()[-1]) from None


def read_rgb(path: Path, strict: bool = False) -> torch.Tensor:
    """An RGB image as uint8 [3, H, W] (16-bit images are scaled down to 8 bits)."""
    img = read_png(path, ImageReadMode.RGB, strict=strict)
    if img.dtype != torch.uint8:
        img = (img.to(torch.int32) >> 8).to(torch.uint8)
    return img


def write_png(path: Path, tensor: torch.Tensor, compression_level: int = 1) -> None:
    """Atomically write a uint8 [C, H, W] or [H, W] tensor as PNG (fast compression by default)."""
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    data = encode_png(tensor.detach().cpu().contiguous(), compression_level=compression_level)
    atomic_write_bytes(path, data.numpy().tobytes())
