"""Map-style datasets of any registered dataset (``udabench.data.registry``) in its layout.

Samples follow docs/conventions.md: ``image`` uint8 [3,H,W], ``label`` uint8 trainIds [H,W]
(absent for label-free views), ``id`` (file stem), ``index``; training transforms add ``geometry``.
An index may be an int, or ``(index, aug_seed)`` as produced by the infinite loaders, so that
augmentation randomness depends on (run seed, domain, epoch, position) and not on worker layout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torchvision.io import ImageReadMode

from udabench.data import layouts
from udabench.data.layouts import Pair
from udabench.data.freshness import require_fresh
from udabench.data.manifest import MISSING_LABEL, USABLE, Manifest, cache_dir, locate_manifest
from udabench.data.pngio import read_png, read_rgb
from udabench.data.registry import get_dataset
from udabench.data.spec import DatasetSpec, LabelEncodingError, LabelRangeError  # noqa: F401
from udabench.data.transforms import resize_label
from udabench.errors import DataError
from udabench.seeding import sample_seed  # noqa: F401  (re-exported)

Transform = Callable[[dict[str, Any], torch.Generator], dict[str, Any]]


def map_ids(kind: str | DatasetSpec, ids: torch.Tensor) -> torch.Tensor:
    """Raw label ids (uint8, or int32 for 16-bit labels) -> uint8 trainIds (the dataset's table)."""
    return get_dataset(kind).map_ids(ids)


def raw_label_ids(kind: str | DatasetSpec, raw: torch.Tensor, path: Path) -> torch.Tensor:
    """The [H, W] id plane of a decoded label; raises LabelEncodingError / LabelRangeError."""
    return get_dataset(kind).label_ids(raw, path)


def decode_label(kind: str | DatasetSpec, path: Path, strict: bool = False) -> torch.Tensor:
    """Read a label file of ``kind`` and map it to uint8 trainIds [H, W] (255 = ignore)."""
    return get_dataset(kind).decode_label(path, strict)


class SegmentationDataset(torch.utils.data.Dataset):
    """One split of one dataset kind. ``with_labels=False`` serves images only (target train).

    ``manifest``: "auto" finds it (``udabench.data.manifest.locate_manifest``: an environment
    variable, the configured location, or ``<root>/udabench_prepared/manifest.json`` when present),
    a path uses that file, None scans the folders. A manifest that no longer matches the files on
    disk is refused. ``cache_size`` (W, H) reads the resized cache that prepare wrote at that size,
    when the manifest has one. ``manifest_path`` says which manifest was used (None: none).
    """

    supports_aug_seed = True  # InfiniteLoader passes (index, aug_seed) keys

    def __init__(self, kind: str | DatasetSpec, root: Path, split: str = "train", *,
                 with_labels: bool = True, transform: Transform | None = None,
                 manifest: Path | Literal["auto"] | None = "auto",
                 cache_size: tuple[int, int] | None = None):
        self.spec = get_dataset(kind)
        self.kind, self.root, self.split = self.spec.name, Path(root), split
        self.with_labels, self.transform = with_labels, transform
        self.label_is_train_id = False  # cached labels are already trainIds
        self.manifest: Manifest | None = None
        layouts.check_root(self.spec, self.root)
        self.spec.check_split(split)
        self.manifest_path = locate_manifest(self.kind, self.spec.title, self.root, manifest)
        if self.manifest_path is not None:
            self.manifest = Manifest.load(self.manifest_path)
            if self.manifest.kind != self.kind:
                raise DataError(f"manifest {self.manifest_path} is for '{self.manifest.kind}', "
                                f"not '{self.kind}'")
            require_fresh(self.manifest, self.manifest_path, self.spec, self.root, split,
                          with_labels)
            self.pairs = self._pairs_from_manifest(self.manifest, cache_size,
                                                   self.manifest_path.parent)
        else:
            found = layouts.scan(self.spec, self.root, split, with_labels)
            layouts.require_complete(found)
            self.pairs = found.pairs
        if not self.pairs:
            raise DataError(f"{self.spec.title} {split} at {self.root} has no usable images")

    def _pairs_from_manifest(self, man: Manifest, cache_size: tuple[int, int] | None,
                             out_dir: Path) -> list[Pair]:
        ok = USABLE if self.with_labels else USABLE + (MISSING_LABEL,)
        entries = [e for e in man.entries if e.split == self.split and e.status in ok and e.image_ok]
        use_cache = cache_size is not None and man.cache_size == tuple(cache_size)
        if use_cache and all(e.cached for e in entries):
            base = cache_dir(out_dir, man.cache_size) / self.split
            self.label_is_train_id = True
            return [Pair(e.id, base / "images" / f"{e.id}.png",
                         base / "labels" / f"{e.id}.png" if self.with_labels else None,
                         self.spec.images.groups_of(e.image))  # type: ignore[arg-type]
                    for e in entries]
        return [Pair(e.id, self.root / e.image,  # type: ignore[operator]
                     self.root / e.label if (self.with_labels and e.label) else None,
                     self.spec.images.groups_of(e.image))  # type: ignore[arg-type]
                for e in entries]

    @property
    def scored_at_label_size(self) -> bool:
        """The size rule: a scored split (val) served for evaluation keeps each label at its own
        size - the evaluator upsamples logits to it, predict writes at it, score requires it.
        Training views get labels resized to their image (nearest)."""
        return self.split in self.spec.eval_splits and (
            self.transform is None or getattr(self.transform, "keeps_label_size", False))

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
                label = self.spec.label_ids(raw, pair.label)
                label = self.spec.map_ids(label) if map_labels else label
            if label.shape != image.shape[1:] and not self.scored_at_label_size:
                # Known GTA5 defect (docs/datasets.md): labels a few pixels off; training needs
                # them on the image's pixel grid, and nearest keeps ids valid.
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
            sample["label"] = self.spec.map_ids(sample["label"])
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


def build_dataset(kind: str | DatasetSpec, root: Path, split: str = "train", *,
                  with_labels: bool | None = None, **kw: Any) -> SegmentationDataset:
    """``split`` of a registered dataset; labelled unless the split is the dataset's unlabelled
    (target training) split, which gives labels only when asked (``with_labels=True``: oracle)."""
    spec = get_dataset(kind)
    labelled = spec.labelled_by_default(split) if with_labels is None else with_labels
    return SegmentationDataset(spec, root, split, with_labels=labelled, **kw)


def gta5(root: Path, transform: Transform | None = None, **kw: Any) -> SegmentationDataset:
    return build_dataset("gta5", root, "train", transform=transform, **kw)


def synthia(root: Path, transform: Transform | None = None, **kw: Any) -> SegmentationDataset:
    return build_dataset("synthia", root, "train", transform=transform, **kw)


def cityscapes(root: Path, split: str, *, with_labels: bool | None = None,
               transform: Transform | None = None, **kw: Any) -> SegmentationDataset:
    """Cityscapes ``split``; train is label-free unless ``with_labels=True`` (oracle only)."""
    return build_dataset("cityscapes", root, split, with_labels=with_labels, transform=transform,
                         **kw)
