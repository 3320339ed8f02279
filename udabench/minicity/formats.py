"""Writing MiniCity scenes in the real on-disk formats of GTA5, SYNTHIA-RAND-CITYSCAPES and
Cityscapes (docs/protocol.md sections 2-4), so that udabench's real loaders read them unchanged.

PNGs are encoded by a small numpy + zlib writer rather than torchvision/Pillow, measured on
512x1024 RGB: torchvision's encode_png (libpng, adaptive filters) takes ~29 ms even at level 0 and
~66 ms at level 1 on a noisy image, which alone would cap generation below the 25 images/s target;
here the "Up" filter is one vectorised subtraction and zlib does the rest. It also writes what
torchvision cannot: encode_png accepts only uint8, while SYNTHIA labels are 16-bit RGB. Every
format is checked in tests by decoding with torchvision.io.decode_png (libpng) and Pillow.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from udabench.fileio import atomic_write_bytes as write_atomic
from udabench.minicity.params import MiniCityParams
from udabench.minicity.render import CODE_TO_LABEL_ID, CODE_TO_SYNTHIA_ID, instance_map, render_full
from udabench.taxonomy import CLASSES, LABEL_ID_COLORS

Progress = Callable[[int], None] | None

# zlib level per content: the flat game images and the label maps compress 50-100x at level 1
# for a few ms; the noisy real images barely compress (sensor noise is incompressible) while
# deflate costs ~25 ms per 512x1024 image, so they are stored (level 0). Measured in
# bench/bench_minicity.py, which prints both rates.
LEVEL_FLAT = 1
LEVEL_NOISY = 0

# The GTA5 palette: the official Cityscapes colour of each labelId (the other entries are black).
GTA5_PALETTE = np.zeros((256, 3), dtype=np.uint8)
for _i, _c in LABEL_ID_COLORS.items():
    GTA5_PALETTE[_i] = _c
GTA5_PALETTE.setflags(write=False)

TRAIN_CITIES = ("pixelburg", "gridford", "vectoria", "mintown")
VAL_CITIES = ("rasterdam", "polyhaven")
CS_FRAME = 19  # Cityscapes' annotated frame is the 20th of each 30-frame snippet


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(arr: np.ndarray, level: int, palette: np.ndarray | None = None) -> bytes:
    """Encode HxW uint8/uint16 (grey, or uint8 palette indices with `palette` (N, 3)), or HxWx3
    uint8/uint16 (RGB)."""
    if arr.ndim == 2:
        colour_type, depth = (3 if palette is not None else 0), 8 * arr.dtype.itemsize
    elif arr.ndim == 3 and arr.shape[2] == 3:
        colour_type, depth = 2, 8 * arr.dtype.itemsize
    else:
        raise ValueError(f"cannot encode an array of shape {arr.shape} as PNG")
    if arr.dtype not in (np.uint8, np.uint16) or (depth == 16 and palette is not None):
        raise ValueError(f"cannot encode dtype {arr.dtype} as PNG")
    h, w = arr.shape[:2]
    if arr.dtype == np.uint16:
        arr = arr.astype(">u2")  # PNG stores 16-bit samples big-endian
    rows = np.ascontiguousarray(arr).view(np.uint8).reshape(h, -1)
    filtered = np.empty((h, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # "Up": each byte minus the byte above (mod 256)
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    comp = zlib.compressobj(level, zlib.DEFLATED, 15, 9)
    idat = comp.compress(filtered.data) + comp.flush()
    header = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)
    parts = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header)]
    if palette is not None:
        parts.append(_chunk(b"PLTE", np.ascontiguousarray(palette, dtype=np.uint8).tobytes()))
    parts += [_chunk(b"IDAT", idat), _chunk(b"IEND", b"")]
    return b"".join(parts)


_IEND = _chunk(b"IEND", b"")


def is_complete_png(path: Path) -> bool:
    """Cheap completeness check: present and ending in the IEND chunk."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-len(_IEND), os.SEEK_END)
            return fh.read() == _IEND
    except OSError:
        return False


def image_seed(params: MiniCityParams, split: str, index: int) -> int:
    """Seed of one image from (params.seed, split, index): independent of generation order."""
    ss = np.random.SeedSequence([params.seed, zlib.crc32(split.encode()), index])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def synthia_label(code: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """HxWx3 uint16: SYNTHIA class id (red), instance id (green), 0 (blue)."""
    label = np.zeros(code.shape + (3,), dtype=np.uint16)
    label[..., 0] = np.take(CODE_TO_SYNTHIA_ID, code, mode="clip")
    label[..., 1] = instances
    return label


def _missing(paths: list[Path], skip_existing: bool) -> set[Path]:
    return {p for p in paths if not (skip_existing and is_complete_png(p))}


def write_gta5(root: Path, params: MiniCityParams, n: int, progress: Progress = None,
               skip_existing: bool = False) -> None:
    """images/00001.png (RGB) and labels/00001.png (8-bit palette, indices = labelIds).

    skip_existing keeps files that are already whole (used to resume an interrupted run).
    """
    root = Path(root)
    for i in range(n):
        name = f"{i + 1:05d}.png"
        img, lab = root / "images" / name, root / "labels" / name
        todo = _missing([img, lab], skip_existing)
        if todo:
            rgb, cv = render_full(image_seed(params, "gta5", i), params.height, params.width,
                                  "game", "gta5", params)
            if lab in todo:
                write_atomic(lab, png_bytes(CODE_TO_LABEL_ID[cv.code], LEVEL_FLAT, GTA5_PALETTE))
            if img in todo:
                write_atomic(img, png_bytes(rgb, LEVEL_FLAT))
        if progress:
            progress(1)


def write_synthia(root: Path, params: MiniCityParams, n: int, progress: Progress = None,
                  skip_existing: bool = False) -> None:
    """RGB/0000000.png and GT/LABELS/0000000.png (16-bit RGB: class id, instance id, 0)."""
    root = Path(root)
    for i in range(n):
        name = f"{i:07d}.png"
        img, lab = root / "RGB" / name, root / "GT" / "LABELS" / name
        todo = _missing([img, lab], skip_existing)
        if todo:
            rgb, cv = render_full(image_seed(params, "synthia", i), params.height, params.width,
                                  "game", "synthia", params)
            if lab in todo:
                write_atomic(lab, png_bytes(synthia_label(cv.code, instance_map(cv)), LEVEL_FLAT))
            if img in todo:
                write_atomic(img, png_bytes(rgb, LEVEL_FLAT))
        if progress:
            progress(1)


# Cityscapes labelIds whose objects are counted in _gtFine_instanceIds.png (hasInstances in
# cityscapesscripts; caravan 29 and trailer 30 also have instances but MiniCity draws none).
_INSTANCE_LABEL_IDS = np.array(sorted(c.label_id for c in CLASSES if c.train_id >= 11), np.uint8)


def cityscapes_instance_ids(label_ids: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """uint16 ``_gtFine_instanceIds`` content as in Cityscapes: labelId * 1000 + k on the pixels of
    counted objects (k numbers the objects of one class from 0), the labelId elsewhere."""
    out = label_ids.astype(np.uint16)
    counted = (instances > 0) & np.isin(label_ids, _INSTANCE_LABEL_IDS)
    if counted.any():
        keys = label_ids[counted].astype(np.int64) * 65536 + instances[counted]
        unique, inverse = np.unique(keys, return_inverse=True)
        cls = unique // 65536  # sorted by class, then instance
        k = np.arange(unique.size) - np.searchsorted(cls, cls)  # rank within the class
        out[counted] = (cls * 1000 + k)[inverse].astype(np.uint16)
    return out


# The files of one Cityscapes image (suffixes after the stem); the official evaluator opens the
# labelIds and, for its instance-level scores, the instanceIds.
CITYSCAPES_GT_FILES = ("_gtFine_labelIds.png", "_gtFine_instanceIds.png")


def cityscapes_stem(split: str, index: int) -> tuple[str, str]:
    """(city, stem) of image `index` of a split, e.g. ('pixelburg', 'pixelburg_000003_000019')."""
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{CS_FRAME:06d}"


def write_cityscapes(root: Path, params: MiniCityParams, n_train: int, n_val: int,
                     progress: Progress = None, skip_existing: bool = False) -> None:
    """leftImg8bit/{split}/<city>/<stem>_leftImg8bit.png and gtFine/.../<stem>_gtFine_labelIds.png
    with its <stem>_gtFine_instanceIds.png (16-bit), the files the official tools open."""
    root = Path(root)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            city, stem = cityscapes_stem(split, i)
            img = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            lab, inst = (root / "gtFine" / split / city / f"{stem}{s}" for s in CITYSCAPES_GT_FILES)
            todo = _missing([img, lab, inst], skip_existing)
            if todo:
                rgb, cv = render_full(image_seed(params, f"cityscapes/{split}", i), params.height,
                                      params.width, "real", "cityscapes", params)
                label_ids = CODE_TO_LABEL_ID[cv.code]
                if lab in todo:
                    write_atomic(lab, png_bytes(label_ids, LEVEL_FLAT))
                if inst in todo:
                    write_atomic(inst, png_bytes(cityscapes_instance_ids(label_ids, instance_map(cv)),
                                                 LEVEL_FLAT))
                if img in todo:
                    write_atomic(img, png_bytes(rgb, LEVEL_NOISY))
            if progress:
                progress(1)
