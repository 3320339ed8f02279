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
from pngkit import PNG_TYPES, encode_png


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


# -- every colour type and bit depth --------------------------------------------------------------
def _png_cases():
    for color_type, (_, depths) in PNG_TYPES.items():
        for depth in depths:
            for interlace in (False, True):
                name = f"type{color_type}-{depth}bit" + ("-interlaced" if interlace else "")
                yield pytest.param(color_type, depth, interlace, id=name)


@pytest.mark.parametrize("color_type,depth,interlace", list(_png_cases()))
def test_every_colour_type_and_bit_depth_decodes_to_its_values(tmp_path, color_type, depth,
                                                               interlace):
    """UNCHANGED gives the stored samples (palette indices, grey values, every channel); RGB gives
    the colours an image viewer shows; both checked against the source array."""
    channels = PNG_TYPES[color_type][0]
    rng = np.random.default_rng(color_type * 100 + depth)
    h, w = 11, 13  # odd sizes: rows do not end on a byte boundary at low depths
    samples = rng.integers(0, 2 ** depth, (h, w, channels), dtype=np.int64)
    palette = rng.integers(0, 256, (2 ** depth, 3)) if color_type == 3 else None
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(samples, color_type, depth, palette, interlace))
    info = read_png_info(path)
    assert (info.bit_depth, info.color_type, info.channels) == (depth, color_type, channels)

    raw = read_png(path, strict=True)
    assert raw.dtype == (torch.uint16 if depth == 16 else torch.uint8)
    assert raw.shape == (channels, h, w)
    assert np.array_equal(raw.to(torch.int32).permute(1, 2, 0).numpy(), samples)

    rgb = read_rgb(path, strict=True).permute(1, 2, 0).numpy().astype(np.int64)
    if color_type == 3:
        expected = palette[samples[..., 0]]
    else:
        colour = samples[..., :1].repeat(3, -1) if channels <= 2 else samples[..., :3]
        expected = colour >> 8 if depth == 16 else colour * (255 // (2 ** depth - 1))
    assert rgb.shape == (h, w, 3) and np.array_equal(rgb, expected)


@pytest.mark.parametrize("color_type,depth", [(2, 4), (4, 2), (6, 1), (3, 16), (0, 3), (2, 12)])
def test_depths_the_standard_forbids_are_refused_in_one_line(tmp_path, color_type, depth):
    path = tmp_path / "bad.png"
    samples = np.zeros((4, 5, PNG_TYPES[color_type][0]), dtype=np.int64)
    data = bytearray(encode_png(samples, color_type, 8, np.zeros((256, 3)) if color_type == 3
                                else None))
    data[24] = depth  # IHDR bit depth, then repair the CRC so only the header check can tell
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptPNGError, match=f"cannot have {depth} bits") as err:
        read_png(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_pillow_4bit_palette_reads_as_indices(tmp_path):
    """Pillow writes palettes of 16 colours or fewer with 4 bits per pixel (torchvision alone
    returns the packed bytes)."""
    ids = np.random.default_rng(5).integers(0, 16, (7, 9)).astype(np.uint8)
    img = Image.fromarray(ids, mode="P")
    img.putpalette([v for i in range(16) for v in (i * 9, i, 255 - i)])
    img.save(tmp_path / "p.png")
    assert read_png_info(tmp_path / "p.png").bit_depth == 4
    assert np.array_equal(read_png(tmp_path / "p.png")[0].numpy(), ids)
