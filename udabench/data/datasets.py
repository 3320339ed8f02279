"""Map-style datasets for GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes in their official layouts.

Samples follow docs/conventions.md: ``image`` uint8 [3,H,W], ``label`` uint8 trainIds [H,W]
(absent for label-free views), ``id`` (file stem), ``index``; training transforms add ``geometry``.
An index may be an int, or ``(index, aug_seed)`` as produced by the infinite loaders, so that
augmentation randomness depends on (run seed, domain, epoch, position) and not on worker layout.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from torchvision.io import ImageReadMode

from udabench import taxonomy
from udabench.data import layouts
from udabench.data.layouts import Pair
from udabench.data.manifest import MISSING_LABEL, USABLE, Manifest, cache_dir, default_manifest_path
from udabench.data.pngio import read_png, read_rgb
from udabench.data.transforms import resize_label
from udabench.errors import DataError

Transform = Callable[[dict[str, Any], torch.Generator], dict[str, Any]]

_LUTS: dict[str, np.ndarray] = {}


class LabelEncodingError(DataError):
    """A label PNG in the wrong encoding (expanded palette, 8-bit SYNTHIA, colour labels...)."""


class LabelRangeError(DataError):
    """A label holding values outside the dataset's id range."""


def _lut(kind: str) -> np.ndarray:
    if kind not in _LUTS:
        _LUTS[kind] = {"gta5": taxonomy.GTA5_ID_TO_TRAIN_ID, "synthia": taxonomy.SYNTHIA_TO_TRAIN_ID,
                       "cityscapes": taxonomy.LABEL_ID_TO_TRAIN_ID}[kind]
    return _LUTS[kind]


def map_ids(kind: str, ids: torch.Tensor) -> torch.Tensor:
    """Raw label ids (uint8, or int32 for SYNTHIA) -> uint8 trainIds through the lookup table.

    numpy's take is several times faster than torch indexing for this on the CPU.
    """
    if ids.device.type != "cpu":
        return torch.from_numpy(_lut(kind).copy()).to(ids.device)[ids.long()]
    return torch.from_numpy(np.take(_lut(kind), ids.numpy()))


def raw_label_ids(kind: str, raw: torch.Tensor, path: Path) -> torch.Tensor:
    """The [H, W] id plane of a decoded label (palette indices / labelIds / SYNTHIA red channel).

    Raises LabelEncodingError on the wrong encoding and LabelRangeError on out-of-range values.
    """
    channels, dtype = raw.shape[0], raw.dtype
    found = f"{channels}-channel {'16' if dtype == torch.uint16 else '8'}-bit"
    if kind == "synthia":
        if dtype != torch.uint16 or channels != 3:
            raise LabelEncodingError(
                f"SYNTHIA label {path} is {found}; SYNTHIA-RAND-CITYSCAPES labels must be the original "
                f"16-bit 3-channel PNGs (class id in the red channel): a tool that re-saved them in "
                f"8 bits (Pillow, OpenCV without IMREAD_UNCHANGED, imageio) destroyed the ids; "
                f"re-extract the original files")
        ids = raw[0].to(torch.int32)  # uint16 supports few torch ops
    else:
        if dtype != torch.uint8 or channels != 1:
            what = ("an 8-bit palette PNG whose indices are Cityscapes labelIds (as distributed); the "
                    "file looks re-saved with its palette expanded to colours" if kind == "gta5" else
                    "an 8-bit single-channel *_gtFine_labelIds.png (not *_gtFine_color.png)")
            raise LabelEncodingError(f"{layouts.layout(kind).title} label {path} is {found}; expected "
                                     f"{what}; re-extract the original files")
        ids = raw[0]
    limit = layouts.layout(kind).max_label_value
    if int(ids.max()) > limit:
        bad = (ids > limit) if kind == "synthia" else (ids > limit) & (ids != 255)
        if bool(bad.any()):
            values = torch.unique(ids[bad])[:5].tolist()
            raise LabelRangeError(
                f"{layouts.layout(kind).title} label {path} holds values {values} outside 0..{limit}"
                f"{'' if kind == 'synthia' else ' (and 255)'}; the file is not a valid "
                f"{layouts.layout(kind).label_encoding} label")
    return ids


def decode_label(kind: str, path: Path, strict: bool = False) -> torch.Tensor:
    """Read a label file of ``kind`` and map it to uint8 trainIds [H, W] (255 = ignore)."""
    raw = read_png(path, ImageReadMode.UNCHANGED, strict=strict)
    return map_ids(kind, raw_label_ids(kind, raw, path))


def sample_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SegmentationDataset(torch.utils.data.Dataset):
    """One split of one dataset kind. ``with_labels=False`` serves images only (target train).

    ``manifest``: "auto" uses ``<root>/udabench_prepared/manifest.json`` when present, a path uses
    that file, None scans the folders. ``cache_size`` (W, H) reads the resized cache that prepare
    wrote at that size, when the manifest has one.
    """

    supports_aug_seed = True  # InfiniteLoader passes (index, aug_seed) keys

    def __init__(self, kind: str, root: Path, split: str = "train", *, with_labels: bool = True,
                 transform: Transform | None = None, manifest: Path | Literal["auto"] | None = "auto",
                 cache_size: tuple[int, int] | None = None):
        self.kind, self.root, self.split = kind, Path(root), split
        self.with_labels, self.transform = with_labels, transform
        self.label_is_train_id = False  # cached labels are already trainIds
        self.manifest: Manifest | None = None
        layouts.check_root(kind, self.root)
        path = default_manifest_path(self.root) if manifest == "auto" else manifest
        if path is not None and (manifest != "auto" or Path(path).is_file()):
            self.manifest = Manifest.load(Path(path))
            self.pairs = self._pairs_from_manifest(self.manifest, cache_size, Path(path).parent)
        else:
            found = layouts.scan(kind, self.root, split, with_labels)
            layouts.require_complete(found)
            self.pairs = found.pairs
        if not self.pairs:
            raise DataError(f"{layouts.layout(kind).title} {split} at {self.root} has no usable images")

    def _pairs_from_manifest(self, man: Manifest, cache_size: tuple[int, int] | None,
                             out_dir: Path) -> list[Pair]:
        if man.kind != self.kind:
            raise DataError(f"manifest in {out_dir} is for '{man.kind}', not '{self.kind}'")
        ok = USABLE if self.with_labels else USABLE + (MISSING_LABEL,)
        entries = [e for e in man.entries if e.split == self.split and e.status in ok and e.image_ok]
        use_cache = cache_size is not None and man.cache_size == tuple(cache_size)
        if use_cache and all(e.cached for e in entries):
            base = cache_dir(out_dir, man.cache_size) / self.split
            self.label_is_train_id = True
            return [Pair(e.id, base / "images" / f"{e.id}.png",
                         base / "labels" / f"{e.id}.png" if self.with_labels else None)
                    for e in entries]
        return [Pair(e.id, self.root / e.image,
                     self.root / e.label if (self.with_labels and e.label) else None)
                for e in entries]

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.pairs]

    def load(self, index: int, map_labels: bool = True) -> dict[str, Any]:
        """The untransformed sample at ``index``; ``map_labels=False`` leaves raw label ids."""
        pair = self.pairs[index]
        image = read_rgb(pair.image)
        sample: dict[str, Any] = {"image": image, "id": pair.id, "index": index}
        if self.with_labels:
            if pair.label is None:
                raise DataError(f"{pair.image} has no label")
            raw = read_png(pair.label, ImageReadMode.UNCHANGED)
            if self.label_is_train_id:
                label = raw[0]
            else:
                label = raw_label_ids(self.kind, raw, pair.label)
                label = map_ids(self.kind, label) if map_labels else label
            if label.shape != image.shape[1:]:
                # Known GTA5 defect (protocol.md 2): labels a few pixels off; nearest keeps ids valid.
                label = resize_label(label, tuple(image.shape[1:]))
            sample["label"] = label
        return sample

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, aug_seed = key if isinstance(key, tuple) else (int(key), None)
        # Transforms that only move label pixels (crop, nearest resize, flip, pad with 255) commute
        # with the id lookup, so it is applied after them, on the crop instead of the full frame.
        defer = getattr(self.transform, "label_pixels_only", False) and not self.label_is_train_id
        sample = self.load(index, map_labels=not defer)
        if self.transform is not None:
            gen = torch.Generator()
            gen.manual_seed(aug_seed if aug_seed is not None else sample_seed(self.kind, index))
            sample = self.transform(sample, gen)
        if defer and "label" in sample:
            sample["label"] = map_ids(self.kind, sample["label"])
        return sample

    def class_counts(self) -> torch.Tensor:
        """[N, 19] pixel counts per image from the manifest (for class-balanced sampling)."""
        if self.manifest is None:
            raise DataError(f"class counts need a manifest; run `udabench data prepare {self.kind}` "
                            f"for {self.root}")
        if not self.with_labels:
            raise DataError("class counts of a label-free view are not available (target firewall)")
        return torch.from_numpy(self.manifest.class_counts(self.split))

    def __repr__(self) -> str:
        labels = "labelled" if self.with_labels else "no labels"
        return (f"SegmentationDataset({self.kind}, {self.split}, {len(self)} images, {labels}, "
                f"{self.root})")


def gta5(root: Path, transform: Transform | None = None, **kw: Any) -> SegmentationDataset:
    return SegmentationDataset("gta5", root, "train", transform=transform, **kw)


def synthia(root: Path, transform: Transform | None = None, **kw: Any) -> SegmentationDataset:
    return SegmentationDataset("synthia", root, "train", transform=transform, **kw)


def cityscapes(root: Path, split: str, *, with_labels: bool | None = None,
               transform: Transform | None = None, **kw: Any) -> SegmentationDataset:
    """Cityscapes ``split``; train is label-free unless ``with_labels=True`` (oracle only)."""
    labelled = (split == "val") if with_labels is None else with_labels
    return SegmentationDataset("cityscapes", root, split, with_labels=labelled, transform=transform,
                               **kw)


def build_dataset(kind: str, root: Path, split: str = "train", **kw: Any) -> SegmentationDataset:
    layouts.layout(kind)
    if kind == "cityscapes":
        return cityscapes(root, split, **kw)
    return SegmentationDataset(kind, root, split, **kw)
