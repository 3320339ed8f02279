"""Benchmark protocols as data: frozen, versioned, hashed specs registered by name.

Every field that changes numbers is part of ``hash()``; results store it and tables never mix
hashes in one column. Sizes are (W, H) as papers write them (1280x720); the data layer works in
(H, W). udabench never downloads datasets: a missing root raises one DataError saying which tree
is expected and where to obtain the data. MiniCity specs generate their data on first use.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from udabench.data import layouts
from udabench.data.datasets import SegmentationDataset, build_dataset
from udabench.data.transforms import ResizeImage, TrainTransform
from udabench.errors import ConfigError, DataError
from udabench.minicity.params import MiniCityParams
from udabench.registry import did_you_mean, register_benchmark
from udabench.taxonomy import SUBSETS

Size = tuple[int, int]  # (W, H)


def _hw(size: Size) -> tuple[int, int]:
    return size[1], size[0]


@dataclass(frozen=True)
class Benchmark:
    name: str
    version: int
    description: str
    source_kind: str  # gta5 | synthia
    source_subdir: str  # below the data root
    target_kind: str  # cityscapes
    target_subdir: str
    subsets: tuple[str, ...]  # scored class subsets, headline first
    source_train_size: Size  # (W, H) source images are resized to for training
    target_train_size: Size
    eval_input_size: Size  # (W, H) the network sees at evaluation
    eval_label_size: Size  # (W, H) of the ground truth logits are upsampled to
    num_classes: int = 19
    convention: str = "A"  # 16-class convention (protocol.md 5.5)
    crop_size: Size | None = None  # None = no crop, the classic recipe
    scale_range: tuple[float, float] | None = None  # random scaling of the resized image
    flip_p: float = 0.5  # horizontal flip probability in training
    interpolation: str = "bilinear"  # image resizing (labels: nearest)
    align_corners: bool = False
    minicity: MiniCityParams | None = None  # generated on first use when set

    def __post_init__(self) -> None:
        for kind in (self.source_kind, self.target_kind):
            layouts.layout(kind)
        unknown = [s for s in self.subsets if s not in SUBSETS]
        if unknown or not self.subsets:
            raise ConfigError(f"benchmark {self.name}: subsets {unknown or '()'} not in "
                              f"{', '.join(SUBSETS)}")
        if self.convention not in ("A", "B"):
            raise ConfigError(f"benchmark {self.name}: convention '{self.convention}' is not A or B")
        sizes = [self.source_train_size, self.target_train_size, self.eval_input_size,
                 self.eval_label_size] + ([self.crop_size] if self.crop_size else [])
        if any(len(s) != 2 or min(s) < 1 for s in sizes):
            raise ConfigError(f"benchmark {self.name}: sizes must be positive (W, H) pairs")
        mc = self.minicity
        if mc is not None and tuple(self.eval_label_size) != (mc.width, mc.height):
            raise ConfigError(f"benchmark {self.name}: eval_label_size {self.eval_label_size} must "
                              f"equal the generated MiniCity size ({mc.width}, {mc.height})")

    # -- identity ---------------------------------------------------------------------------
    def hash(self) -> str:
        """Short sha256 of every field that changes numbers (not the description)."""
        payload = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "description"}
        if self.minicity is not None:
            payload["minicity"] = self.minicity.key()
        blob = json.dumps(payload, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def with_overrides(self, overrides: dict[str, Any]) -> "Benchmark":
        """A copy with fields replaced (e.g. from ``[benchmarks.<name>]``); the hash follows."""
        names = [f.name for f in fields(self)]
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            if key not in names or key == "name":
                raise ConfigError(f"benchmarks.{self.name}.{key} is not a benchmark setting"
                                  f"{did_you_mean(key, names)}")
            if key == "minicity":
                base = dataclasses.asdict(self.minicity or MiniCityParams())
                value = MiniCityParams(**{**base, **value})
            elif isinstance(value, list):
                value = tuple(value)
            changes[key] = value
        return dataclasses.replace(self, **changes)

    def summary_row(self) -> tuple[str, str, str, str, str, str]:
        """(name, description, source -> target, scored, train / eval input, spec) for tables."""
        src = layouts.layout(self.source_kind).title
        tgt = layouts.layout(self.target_kind).title
        scored = ", ".join(f"mIoU{s}" for s in self.subsets) + f" (conv. {self.convention})"
        crop = f" crop {self.crop_size[0]}x{self.crop_size[1]}" if self.crop_size else ""
        sizes = (f"{self.source_train_size[0]}x{self.source_train_size[1]}{crop} / "
                 f"{self.eval_input_size[0]}x{self.eval_input_size[1]} -> "
                 f"{self.eval_label_size[0]}x{self.eval_label_size[1]}")
        return (self.name, self.description, f"{src} -> {tgt}", scored, sizes,
                f"v{self.version} {self.hash()}")

    # -- data ---------------------------------------------------------------------------------
    def roots(self, data_root: Path, console: Any = None) -> tuple[Path, Path]:
        """(source root, target root); MiniCity data is generated here when missing.

        A missing real dataset raises ONE DataError with every expected tree and its source.
        """
        data_root = Path(data_root)
        if self.minicity is not None:
            from udabench.minicity import ensure_minicity

            paths = ensure_minicity(data_root, self.minicity, sources=(self.source_kind,),
                                    console=console)
            return getattr(paths, self.source_kind), paths.cityscapes
        src, tgt = data_root / self.source_subdir, data_root / self.target_subdir
        missing = [(k, r) for k, r in ((self.source_kind, src), (self.target_kind, tgt))
                   if not r.is_dir()]
        if missing:
            parts = [f"{layouts.layout(k).title} not found at {r}: {layouts.where_to_get(k, r)}"
                     for k, r in missing]
            raise DataError(f"benchmark {self.name} needs its datasets under {data_root} "
                            f"(set [paths] data_root in udabench.toml or UDABENCH_DATA); "
                            + "; ".join(parts))
        return src, tgt

    def train_transform(self, size: Size) -> TrainTransform:
        return TrainTransform(size=_hw(size), scale_range=self.scale_range,
                              crop=_hw(self.crop_size) if self.crop_size else None,
                              flip_p=self.flip_p, interpolation=self.interpolation)

    def eval_transform(self) -> ResizeImage:
        return ResizeImage(_hw(self.eval_input_size), self.interpolation)

    def datasets(self, data_root: Path, console: Any = None
                 ) -> tuple[SegmentationDataset, SegmentationDataset, SegmentationDataset]:
        """(source train, target train WITHOUT labels, target val with full-resolution labels)."""
        src, tgt = self.roots(data_root, console)
        source = build_dataset(self.source_kind, src, "train",
                               transform=self.train_transform(self.source_train_size),
                               cache_size=self.source_train_size)
        target = build_dataset(self.target_kind, tgt, "train", with_labels=False,
                               transform=self.train_transform(self.target_train_size),
                               cache_size=self.target_train_size)
        val = build_dataset(self.target_kind, tgt, "val", with_labels=True,
                            transform=self.eval_transform())
        return source, target, val

    def target_train_labelled(self, data_root: Path, console: Any = None) -> SegmentationDataset:
        """The labelled target train split: for the oracle method ONLY (breaks the firewall)."""
        _, tgt = self.roots(data_root, console)
        return build_dataset(self.target_kind, tgt, "train", with_labels=True,
                             transform=self.train_transform(self.target_train_size),
                             cache_size=self.target_train_size)


def _register(bench: Benchmark) -> Benchmark:
    return register_benchmark(bench.name, bench.description)(bench)


_CS = dict(target_kind="cityscapes", target_subdir="cityscapes", convention="A")

GTA2CS = _register(Benchmark(
    "gta2cs", 1, "GTA5 -> Cityscapes, 19 classes (the classic protocol)",
    "gta5", "gta5", subsets=("19",), source_train_size=(1280, 720), target_train_size=(1024, 512),
    eval_input_size=(1024, 512), eval_label_size=(2048, 1024), **_CS))

SYNTHIA2CS = _register(Benchmark(
    "synthia2cs", 1, "SYNTHIA-RAND-CITYSCAPES -> Cityscapes, 16 and 13 classes",
    "synthia", "synthia", subsets=("16", "13"), source_train_size=(1280, 760),
    target_train_size=(1024, 512), eval_input_size=(1024, 512), eval_label_size=(2048, 1024), **_CS))

# MiniCity mirrors the real protocols at small size: generated at 512x256, trained at 256x128,
# evaluated with 256x128 input and logits upsampled to the 512x256 labels.
_MINI = dict(source_train_size=(256, 128), target_train_size=(256, 128),
             eval_input_size=(256, 128), eval_label_size=(512, 256), minicity=MiniCityParams(), **_CS)

MINICITY_GTA2CS = _register(Benchmark(
    "minicity-gta2cs", 1, "MiniCity game -> real (GTA5 format), 19 classes; generated, runs anywhere",
    "gta5", "minicity", subsets=("19",), **_MINI))

MINICITY_SYNTHIA2CS = _register(Benchmark(
    "minicity-synthia2cs", 1,
    "MiniCity game -> real (SYNTHIA format), 16 and 13 classes; generated, runs anywhere",
    "synthia", "minicity", subsets=("16", "13"), **_MINI))
