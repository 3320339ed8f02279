"""A PNG writer for every colour type, bit depth and interlace mode, by hand with zlib and struct
(Pillow and torchvision write few of them). Used by the tests only."""
from __future__ import annotations

import struct
import zlib

import numpy as np

# (colour type, channels) and the depths the PNG standard allows for each.
PNG_TYPES = {0: (1, (1, 2, 4, 8, 16)), 2: (3, (8, 16)), 3: (1, (1, 2, 4, 8)), 4: (2, (8, 16)),
             6: (4, (8, 16))}
ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2),
         (1, 0, 2, 1))  # (row start, column start, row step, column step) of the 7 passes


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _rows(samples: np.ndarray, depth: int) -> bytes:
    """Filter-0 scanlines of [h, w, c] samples packed at ``depth`` bits (MSB first)."""
    h, w, c = samples.shape
    if depth == 16:
        packed = samples.astype(">u2").reshape(h, w * c).view(np.uint8)
    elif depth == 8:
        packed = samples.astype(np.uint8).reshape(h, w * c)
    else:
        bits = (samples.reshape(h, w * c, 1) >> np.arange(depth - 1, -1, -1)) & 1
        packed = np.packbits(bits.reshape(h, w * c * depth).astype(np.uint8), axis=1)
    return b"".join(b"\x00" + row.tobytes() for row in packed)


def encode_png(samples: np.ndarray, color_type: int, depth: int, palette: np.ndarray | None = None,
               interlace: bool = False) -> bytes:
    """Any PNG, written by hand with zlib and struct (Pillow cannot write most of these)."""
    h, w, _ = samples.shape
    if interlace:
        raw = b"".join(_rows(samples[y::dy, x::dx], depth) for y, x, dy, dx in ADAM7
                       if samples[y::dy, x::dx].size)
    else:
        raw = _rows(samples, depth)
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type,
                                                               0, 0, int(interlace)))
    if palette is not None:
        out += _chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    return out + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
