"""A small dataset tree in the official layouts and at the official sizes, drawn by MiniCity.

GTA5 1914x1052 (RGB + 8-bit palette labels, one label a few pixels taller than its image, as in
the real set), SYNTHIA-RAND-CITYSCAPES 1280x760 (RGB + 16-bit 3-channel labels) and Cityscapes
2048x1024 (``leftImg8bit`` + ``gtFine`` ``_labelIds.png`` and the 16-bit ``_instanceIds.png`` that
the official ``cityscapesscripts`` evaluator opens for its instance-level scores). Sizes come from
``udabench.data.layouts`` (the nominal size of each real dataset), never from a second table.

The MiniCity writers do the drawing; this module adds what they do not write: the odd-sized GTA5
pair and the Cityscapes instance files (skipped where the writer already made them).
"""
from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from udabench.data import layouts
from udabench.fileio import atomic_write_bytes
from udabench.minicity import MiniCityParams, write_cityscapes, write_gta5, write_synthia
from udabench.minicity.formats import (GTA5_PALETTE, LEVEL_FLAT, cityscapes_stem, image_seed,
                                       png_bytes)
from udabench.minicity.render import CODE_TO_LABEL_ID, build_scene, instance_map, render_full
from udabench.taxonomy import CLASSES

Progress = Callable[[str], None] | None

# The GTA5 label of the last source pair is this many pixels taller than its image (W, H). Real
# GTA5 has such pairs; an odd label height keeps nearest-neighbour resizing free of ties, so its
# expected result is exact (see datacheck.expected_nearest).
ODD_LABEL_EXTRA_ROWS = 3
# Cityscapes labelIds whose pixels carry instance numbers (labelId * 1000 + k) in _instanceIds.png.
_INSTANCE_LABEL_IDS = frozenset(c.label_id for c in CLASSES if c.train_id >= 11)  # person..bicycle


@dataclass(frozen=True)
class TreeSpec:
    """How many images per split; sizes are always the real datasets' sizes."""

    n_source: int = 8  # per source dataset (GTA5 and SYNTHIA), the odd GTA5 pair included
    n_target_train: int = 8  # Cityscapes train (labelled: the oracle trains on it)
    n_val: int = 4  # Cityscapes val
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_source < 2 or self.n_target_train < 1 or self.n_val < 1:
            raise ValueError("a selftest tree needs >= 2 source images and >= 1 target image per split")


@dataclass(frozen=True)
class OddPair:
    """The GTA5 pair whose label size differs from its image (sizes are (W, H))."""

    id: str
    image: Path
    label: Path
    image_size: tuple[int, int]
    label_size: tuple[int, int]


@dataclass(frozen=True)
class Tree:
    roots: dict[str, Path]  # dataset kind -> its root folder
    odd_pair: OddPair | None  # present when GTA5 was written


def nominal_size(kind: str) -> tuple[int, int]:
    """(W, H) of the real dataset's images."""
    size = layouts.layout(kind).nominal_size
    assert size is not None, kind
    return size


def params_for(kind: str, spec: TreeSpec) -> MiniCityParams:
    width, height = nominal_size(kind)
    return dataclasses.replace(MiniCityParams(), seed=spec.seed, height=height, width=width,
                               n_source=spec.n_source, n_target_train=spec.n_target_train,
                               n_target_val=spec.n_val)


def write_tree(roots: dict[str, Path], spec: TreeSpec = TreeSpec(), progress: Progress = None
               ) -> Tree:
    """Write each dataset of ``roots`` (kind -> folder) into its folder; returns where things are."""
    unknown = sorted(set(roots) - set(layouts.KINDS))
    if unknown:
        raise ValueError(f"unknown dataset kinds {unknown}")
    odd = None
    for kind, root in roots.items():
        if progress:
            progress(f"{layouts.layout(kind).title} {'x'.join(map(str, nominal_size(kind)))}")
        params = params_for(kind, spec)
        if kind == "gta5":
            write_gta5(root, params, spec.n_source - 1)
            odd = write_odd_gta5_pair(root, params, spec.n_source - 1)
        elif kind == "synthia":
            write_synthia(root, params, spec.n_source)
        else:
            write_cityscapes(root, params, spec.n_target_train, spec.n_val)
            for split, n in (("train", spec.n_target_train), ("val", spec.n_val)):
                for i in range(n):
                    write_instance_ids(root, params, split, i)
    return Tree(dict(roots), odd)


def write_odd_gta5_pair(root: Path, params: MiniCityParams, index: int) -> OddPair:
    """GTA5 pair ``index`` with the image at the nominal size and the label drawn a few rows taller
    (the same scene: MiniCity's layout depends on the seed, not the size)."""
    seed = image_seed(params, "gta5", index)
    rgb, _ = render_full(seed, params.height, params.width, "game", "gta5", params)
    label_h = params.height + ODD_LABEL_EXTRA_ROWS
    scene = build_scene(seed, label_h, params.width, "gta5", params)
    name = f"{index + 1:05d}.png"
    image, label = Path(root) / "images" / name, Path(root) / "labels" / name
    atomic_write_bytes(label, png_bytes(CODE_TO_LABEL_ID[scene.code], LEVEL_FLAT, GTA5_PALETTE))
    atomic_write_bytes(image, png_bytes(rgb, LEVEL_FLAT))
    return OddPair(name[:-4], image, label, (params.width, params.height), (params.width, label_h))


def cityscapes_instance_ids(label_ids: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """uint16 ``_instanceIds`` content: labelId * 1000 + k on pixels of counted objects (k numbers
    the objects of one class from 0), the labelId elsewhere, as in Cityscapes."""
    out = label_ids.astype(np.uint16)
    counted = (instances > 0) & np.isin(label_ids, list(_INSTANCE_LABEL_IDS))
    if counted.any():
        keys = label_ids[counted].astype(np.int64) * 65536 + instances[counted]
        unique, inverse = np.unique(keys, return_inverse=True)
        cls = unique // 65536  # sorted by class, then instance
        k = np.arange(unique.size) - np.searchsorted(cls, cls)  # rank within the class
        out[counted] = (cls * 1000 + k)[inverse].astype(np.uint16)
    return out


def png16_grey(array: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG (Pillow: MiniCity's writer and torchvision encode 8-bit grey only)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_instance_ids(root: Path, params: MiniCityParams, split: str, index: int) -> Path:
    """``<stem>_gtFine_instanceIds.png`` next to the labelIds file (kept if it already exists)."""
    city, stem = cityscapes_stem(split, index)
    folder = Path(root) / "gtFine" / split / city
    path = folder / f"{stem}_gtFine_instanceIds.png"
    if path.is_file():
        return path
    scene = build_scene(image_seed(params, f"cityscapes/{split}", index), params.height,
                        params.width, "cityscapes", params)
    label_ids = CODE_TO_LABEL_ID[scene.code]
    written = np.array(Image.open(folder / f"{stem}_gtFine_labelIds.png"))
    if not np.array_equal(written, label_ids):  # the scene must be the one the writer drew
        raise RuntimeError(f"MiniCity redrew {stem} differently from its _labelIds.png")
    atomic_write_bytes(path, png16_grey(cityscapes_instance_ids(label_ids, instance_map(scene))))
    return path
