"""PNG reading with torchvision.io, made safe against corrupt files, and atomic PNG writing.

Every PNG colour type and bit depth decodes to its true values: torchvision's ``decode_png``
returns palette PNGs of 1, 2 or 4 bits per pixel as packed bytes and scales 1/2/4-bit grey
samples to 0..255, so ``read_png`` decodes those depths itself (Pillow for palette indices; the
exact inverse scale for grey samples). Combinations the PNG standard does not allow are refused.

torchvision's ``decode_png`` crashes the whole process (segfault) when libpng reports an error such
as a CRC mismatch, so every file is walked chunk by chunk (lengths, CRCs, IHDR) in Python before
it reaches libpng. The walk costs about a tenth of the decode. ``strict=True`` additionally inflates
the image data and checks its length, which catches the rare damage a CRC cannot see (a file
written corrupt); verify and prepare use it, the training loader does not (it doubles the cost).
"""
from __future__ import annotations

import io
import os
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
# Bit depths the PNG standard allows for each colour type.
BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


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
    if depth not in BIT_DEPTHS[color]:
        raise _corrupt(path, f"invalid header ({COLOR_TYPES[color][0]} PNGs cannot have {depth} "
                             f"bits per sample)")
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
    data = _read_bytes(path)
    info = check_png(data.numpy(), path, strict=strict)
    if info.bit_depth < 8 and mode == ImageReadMode.UNCHANGED:
        return _decode_low_depth(data, info, path)
    try:
        return decode_png(data, mode)
    except RuntimeError as exc:
        raise _corrupt(path, str(exc).splitlines()[-1]) from None


def _read_bytes(path: Path) -> torch.Tensor:
    try:
        # read_file hands the bytes to decode_png without a copy; numpy gives the walk a buffer.
        return read_file(str(path))
    except RuntimeError:
        pass
    # read_file failed: a name it cannot pass on (not UTF-8), or an OS error that Python's own
    # open() states in the OS's words (link loop, permission, a folder...).
    if not os.path.lexists(path):
        raise DataError(f"missing file {path}")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not raw:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def _decode_low_depth(data: torch.Tensor, info: PngInfo, path: Path) -> torch.Tensor:
    """1/2/4-bit PNGs read UNCHANGED: palette indices or grey samples as stored (uint8 [1,H,W])."""
    if info.color_type == 3:  # Pillow unpacks palette indices without touching them
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
                indices = np.array(img)
        except (OSError, ValueError) as exc:
            raise _corrupt(path, str(exc)) from None
        return torch.from_numpy(indices.astype(np.uint8)).unsqueeze(0)
    try:  # grey: libpng expands the samples to 8 bits by an exact integer scale; undo it
        grey = decode_png(data, ImageReadMode.UNCHANGED)
    except RuntimeError as exc:
        raise _corrupt(path, str(exc).splitlines()[-1]) from None
    return grey // (255 // (2 ** info.bit_depth - 1))


def read_palette(path: Path) -> np.ndarray | None:
    """The PLTE chunk of a PNG as uint8 [N, 3], or None when it has none (reads the chunks before
    the image data only)."""
    path = Path(path)
    with open(path, "rb") as fh:
        _header(fh.read(33), path)
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return None
            length, ctype = struct.unpack(">I4s", head)
            if ctype in (b"IDAT", b"IEND"):
                return None
            body = fh.read(length + 4)[:length]  # the chunk and its CRC
            if ctype == b"PLTE":
                body = body[: len(body) - len(body) % 3]
                return np.frombuffer(body, dtype=np.uint8).reshape(-1, 3)


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
