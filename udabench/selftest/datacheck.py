"""Checks of the generated tree with udabench's own data tools, before any training.

- ``udabench data verify`` passes every dataset with no error, sees only the nominal image sizes,
  and warns about exactly one thing: the GTA5 label whose size differs from its image.
- That pair is handled the documented way: ``udabench data prepare`` records it in the manifest as
  ``resized_label``, and the training loader (with or without the manifest) returns its label
  resized to the image with nearest neighbour at pixel centres. The expected label is computed here
  independently: Pillow's palette indices, picked with exact integer arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from udabench.data import layouts
from udabench.data.datasets import SegmentationDataset
from udabench.data.manifest import RESIZED
from udabench.data.prepare import PrepareOptions, prepare_dataset
from udabench.data.verify import verify_dataset
from udabench.selftest.tree import OddPair, Tree, nominal_size
from udabench.taxonomy import GTA5_ID_TO_TRAIN_ID

RULE = "label resized to its image with nearest neighbour at pixel centres"


def expected_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of [h, w] to ``size`` (H, W): output pixel centre (i + 0.5) * h / H
    falls in source pixel floor((2i + 1) h / 2H), computed in integers (no rounding at all)."""
    h, w = label.shape
    rows = (2 * np.arange(size[0]) + 1) * h // (2 * size[0])
    cols = (2 * np.arange(size[1]) + 1) * w // (2 * size[1])
    return label[rows][:, cols]


@dataclass
class DatasetCheck:
    kind: str
    root: str
    pairs: dict[str, int]  # split -> image/label pairs
    image_sizes: dict[str, int]  # "WxH" -> images
    nominal_size: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_dataset(kind: str, root: Path) -> DatasetCheck:
    report = verify_dataset(kind, root, quick=False, workers=1)
    w, h = nominal_size(kind)
    return DatasetCheck(
        kind=kind, root=str(root),
        pairs={split: counts["pairs"] for split, counts in report.splits.items()},
        image_sizes={f"{sw}x{sh}": n for (sw, sh), n in sorted(report.image_sizes.items())},
        nominal_size=f"{w}x{h}",
        errors=[f"{p.category}: {p.path}: {p.detail}" for p in report.problems if p.is_error],
        warnings=[f"{p.category}: {p.path}: {p.detail}" for p in report.problems if not p.is_error],
    )


@dataclass
class OddPairCheck:
    id: str
    image_size: list[int]  # (W, H)
    label_size: list[int]
    verify_warned: bool  # `data verify` reported this label (and only it) as a size mismatch
    manifest_status: str  # what `data prepare` recorded
    loader_label_size: list[int]  # (W, H) of the label the training loader returns
    loader_matches_nearest: bool  # with and without the manifest
    rule: str = RULE

    @property
    def ok(self) -> bool:
        return (self.verify_warned and self.manifest_status == RESIZED
                and self.loader_label_size == self.image_size and self.loader_matches_nearest)


def check_odd_pair(odd: OddPair, gta5: DatasetCheck, prepared: Path) -> OddPairCheck:
    root = Path(gta5.root)
    mismatches = [w for w in gta5.warnings if w.startswith("size mismatch")]
    warned = len(mismatches) == 1 and str(odd.label) in mismatches[0]
    manifest = prepare_dataset("gta5", root, prepared, PrepareOptions(workers=1))
    status = next((e.status for e in manifest.entries if e.id == odd.id), "absent")
    raw = np.array(Image.open(odd.label))  # palette indices (= labelIds), not colours
    width, height = odd.image_size
    expected = GTA5_ID_TO_TRAIN_ID[expected_nearest(raw, (height, width))]
    sizes, matches = [], True
    for manifest_path in (None, prepared / "manifest.json"):
        dataset = SegmentationDataset("gta5", root, "train", manifest=manifest_path)
        label = dataset.load(dataset.ids.index(odd.id))["label"].numpy()
        sizes.append([label.shape[1], label.shape[0]])
        matches = matches and label.shape == expected.shape and bool((label == expected).all())
    same_size = sizes[0] if all(s == sizes[0] for s in sizes) else [0, 0]
    return OddPairCheck(odd.id, list(odd.image_size), list(odd.label_size), warned, status,
                        same_size, matches)


def check_tree(tree: Tree, prepared: Path) -> dict[str, Any]:
    """Every dataset verified; the odd GTA5 pair checked. ``ok`` is the overall verdict."""
    datasets = {kind: check_dataset(kind, root) for kind, root in tree.roots.items()}
    problems = []
    for kind, check in datasets.items():
        problems += check.errors
        odd_label = str(tree.odd_pair.label) if kind == "gta5" and tree.odd_pair else None
        problems += [w for w in check.warnings if not (odd_label and odd_label in w)]
        if set(check.image_sizes) != {check.nominal_size}:
            problems.append(f"{layouts.layout(kind).title} image sizes {check.image_sizes}, "
                            f"expected {check.nominal_size}")
    odd = None
    if tree.odd_pair is not None:
        odd = check_odd_pair(tree.odd_pair, datasets["gta5"], prepared)
        if not odd.ok:
            problems.append(f"odd-sized GTA5 pair {odd.id} not handled as documented ({RULE}): "
                            f"verify warned {odd.verify_warned}, manifest {odd.manifest_status}, "
                            f"loader label {odd.loader_label_size}, exact {odd.loader_matches_nearest}")
    return {
        "ok": not problems,
        "problems": problems,
        "datasets": {k: vars(v) for k, v in datasets.items()},
        "odd_gta5_pair": ({**vars(odd), "ok": odd.ok} if odd else None),
    }
