"""``udabench compare A B``: how sure we are that one configuration (or run) is better than another.

Which runs A and B name is ``udabench.results.select``'s job; this module checks that both sides
were scored the same way (benchmark, spec hash, validation set, convention) and measures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from udabench.errors import UserError
from udabench.results.bootstrap import BootstrapResult, SeedInterval, paired_bootstrap, seed_interval
from udabench.results.matrices import headline_ious, load_per_image
from udabench.results.select import Side
from udabench.results.records import weak_val_set
from udabench.taxonomy import CLASS_NAMES, SUBSETS


def _aligned(a: Side, b: Side) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    loaded = [(r, *load_per_image(r["run_dir"])) for r in a.records + b.records]
    ref_rec, ref_ids, _ = loaded[0]
    for rec, ids, _ in loaded[1:]:
        if not np.array_equal(ids, ref_ids):
            common = len(np.intersect1d(ids, ref_ids))
            raise UserError(
                f"runs {ref_rec['run_id']} ({len(ref_ids)} images) and {rec['run_id']} ({len(ids)} images, "
                f"{common} in common) were scored on different validation images; compare needs the same set")
    mats = [m for _, _, m in loaded]
    return mats[: len(a.records)], mats[len(a.records):], len(ref_ids)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


@dataclass
class Comparison:
    a: Side
    b: Side
    subsets: list[str]
    convention: str
    per_class: list[tuple[str, float, float]]  # class, mean IoU of A, of B (over seeds), headline classes
    miou: dict[str, tuple[float, float]]  # subset -> mean mIoU of A, of B (from the records)
    bootstrap: dict[str, BootstrapResult]  # subset -> interval over images
    seeds: SeedInterval | None
    notes: list[str] = field(default_factory=list)

    @property
    def headline(self) -> str:
        return self.subsets[0]

    def verdict(self) -> str:
        h, r = self.headline, self.bootstrap[self.headline]
        pct = f"{r.confidence:.0%}"
        if r.low > 0:
            return f"{self.a.label} beats {self.b.label} by {r.difference:.1f} mIoU{h}, {pct} CI [{r.low:.1f}, {r.high:.1f}]"
        if r.high < 0:
            return (f"{self.b.label} beats {self.a.label} by {-r.difference:.1f} mIoU{h}, "
                    f"{pct} CI [{-r.high:.1f}, {-r.low:.1f}]")
        return (f"no significant difference in mIoU{h} ({self.a.label} - {self.b.label} = {r.difference:+.1f}, "
                f"{pct} CI [{r.low:.1f}, {r.high:.1f}] includes 0)")


def _class_means(records: list[dict[str, Any]], classes: list[str]) -> list[float]:
    """Mean over seeds of the per-class IoUs each record's headline averages (NaN: unknown)."""
    ious = [headline_ious(r) or {} for r in records]
    return [_mean([i.get(n, math.nan) for i in ious]) for n in classes]


def compare(a: Side, b: Side, resamples: int = 1000, seed: int = 0) -> Comparison:
    if (a.benchmark, a.spec_hash) != (b.benchmark, b.spec_hash):
        raise UserError(f"{a.label} is on {a.benchmark} (spec {a.spec_hash}) but {b.label} on {b.benchmark} "
                        f"(spec {b.spec_hash}); compare needs the same benchmark and protocol")
    if a.val_set != b.val_set and not (weak_val_set(a.val_set) or weak_val_set(b.val_set)):
        # (An older record knows only its image count; the per-image ids below are the real check.)
        raise UserError(f"{a.label} was scored on validation set {a.val_set} but {b.label} on {b.val_set}; "
                        "compare needs the same validation images")
    subsets = [str(s) for s in a.records[0]["subsets"]]
    convention = str(a.records[0].get("convention", "A"))
    conv_b = {str(r.get("convention", "A")) for r in b.records}
    if conv_b != {convention}:
        raise UserError(f"{a.label} is scored with convention {convention} but {b.label} with "
                        f"{', '.join(sorted(conv_b))}; compare needs one convention")
    mats_a, mats_b, n_images = _aligned(a, b)
    boot = {s: paired_bootstrap(mats_a, mats_b, s, convention, resamples, seed) for s in subsets}
    classes = [CLASS_NAMES[i] for i in SUBSETS[subsets[0]]]
    per_class = list(zip(classes, _class_means(a.records, classes), _class_means(b.records, classes)))
    miou = {s: (_mean([r["miou"].get(s, math.nan) for r in a.records]),
                _mean([r["miou"].get(s, math.nan) for r in b.records])) for s in subsets}
    notes = [f"interval over the {n_images} validation images ({resamples} paired bootstrap resamples, "
             "seed-mean mIoU per side); it does not cover seed-to-seed variation"]
    seeds = None
    h = subsets[0]
    if len(a.records) >= 2 and len(b.records) >= 2:
        seeds = seed_interval([r["miou"][h] for r in a.records], [r["miou"][h] for r in b.records])
    else:
        notes.append("one seed on a side: seed-to-seed spread (about 1 mIoU) is not covered; "
                     "train more seeds (udabench run METHOD --seeds 0-2) for a seed-level interval")
    return Comparison(a, b, subsets, convention, per_class, miou, boot, seeds, notes)
