"""PNG decoding: palette indices, 16-bit, and corrupt files that must fail cleanly (no segfault)."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode

from udabench.data.pngio import (CorruptPNGError, check_png, read_png, read_png_info, read_rgb,
                                 write_png)
from udabench.errors import DataError


def test_palette_png_gives_indices_not_colours(tmp_path, png):
    ids = np.random.default_rng(0).integers(0, 34, (9, 13)).astype(np.uint8)
    png.palette(tmp_path / "l.png", ids)
    out = read_png(tmp_path / "l.png")
    assert out.dtype == torch.uint8 and out.shape == (1, 9, 13)
    assert np.array_equal(out[0].numpy(), ids)
    # Pillow without .convert() agrees (independent decoder)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "l.png")), ids)
    info = read_png_info(tmp_path / "l.png")
    assert (info.width, info.height, info.mode, info.bit_depth) == (13, 9, "palette", 8)


def test_16bit_three_channel_is_kept(tmp_path, png):
    arr = np.random.default_rng(1).integers(0, 65535, (5, 7, 3)).astype(np.uint16)
    png.rgb16(tmp_path / "s.png", arr)
    out = read_png(tmp_path / "s.png", strict=True)
    assert out.dtype == torch.uint16 and out.shape == (3, 5, 7)
    assert np.array_equal(out.to(torch.int32).permute(1, 2, 0).numpy(), arr.astype(np.int32))
    assert read_png_info(tmp_path / "s.png").describe() == "rgb 16-bit"
    rgb = read_rgb(tmp_path / "s.png")  # images are served as 8 bits
    assert rgb.dtype == torch.uint8
    assert np.array_equal(rgb.permute(1, 2, 0).numpy(), (arr >> 8).astype(np.uint8))


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "garbage", "empty"])
def test_corrupt_png_raises_data_error_naming_file(tmp_path, png, damage):
    path = tmp_path / "bad.png"
    png.u8(path, np.random.default_rng(2).integers(0, 255, (40, 50, 3)))
    if damage == "truncate":
        png.truncate(path)
    elif damage == "flip_byte":
        png.flip_byte(path)  # libpng would crash the interpreter on this one
    elif damage == "garbage":
        path.write_bytes(b"not a png at all" * 10)
    else:
        path.write_bytes(b"")
    with pytest.raises(DataError, match=str(path)) as err:
        read_png(path)
    assert "\n" not in str(err.value)


def test_bad_compressed_data_with_valid_crc_is_caught_in_strict_mode(tmp_path, png):
    path = tmp_path / "z.png"
    png.u8(path, np.full((30, 30), 7))
    data = bytearray(path.read_bytes())
    pos = 8
    while True:  # damage the deflate stream and repair the CRC so only inflating can tell
        (n,) = struct.unpack_from(">I", data, pos)
        if data[pos + 4: pos + 8] == b"IDAT":
            body = pos + 8
            data[body + n - 3] ^= 0xFF  # inside the adler32 trailer
            data[body + n: body + n + 4] = struct.pack(">I", zlib.crc32(data[pos + 4: body + n]))
            break
        pos += 12 + n
    check_png(bytes(data), path)  # CRCs are fine
    with pytest.raises(CorruptPNGError, match="z.png"):
        check_png(bytes(data), path, strict=True)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="missing file .*nope.png"):
        read_png(tmp_path / "nope.png")


def test_write_png_is_atomic_and_roundtrips(tmp_path):
    img = torch.randint(0, 256, (3, 6, 8), dtype=torch.uint8)
    write_png(tmp_path / "sub" / "a.png", img)
    assert torch.equal(read_png(tmp_path / "sub" / "a.png", ImageReadMode.RGB), img)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.png"]  # no temporary left over
