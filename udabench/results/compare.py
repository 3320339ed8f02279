"""``udabench compare A B``: which runs A and B name, and how sure we are that one is better."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from udabench.errors import DataError, UserError
from udabench.results.bootstrap import BootstrapResult, SeedInterval, paired_bootstrap, seed_interval
from udabench.results.store import HOW_TO_RUN, _read_result
from udabench.taxonomy import CLASS_NAMES


@dataclass
class Side:
    """One side of a comparison: the runs (one per seed) of one configuration, or a single run."""

    label: str
    method: str
    benchmark: str
    spec_hash: str
    config_hash: str
    records: list[dict[str, Any]]
    by: str  # "method" (latest config of a method) or "run"

    @property
    def seeds(self) -> list[int]:
        return [int(r["seed"]) for r in self.records]


def _by_path(token: str, records: list[dict[str, Any]]) -> Side | None:
    path = Path(token)
    if not path.is_dir():
        return None
    resolved = str(path.resolve())
    record = next((r for r in records if r["run_dir"] == resolved), None)
    if record is None:  # a run directory outside the store: read it directly
        record = {**_read_result(path.resolve()), "run_dir": resolved}
    return _single(record)


def _single(record: dict[str, Any]) -> Side:
    return Side(str(record["run_id"]), record["method"], record["benchmark"], record["spec_hash"],
                record["config_hash"], [record], "run")


def resolve(token: str, records: list[dict[str, Any]], benchmark: str | None,
            spec_hash: str | None = None) -> Side:
    """A method name (its most recently finished config on the benchmark, every seed of it; under
    ``spec_hash`` when the method has runs there), a run id, or a run directory."""
    side = _by_path(token, records)
    if side is not None:
        return side
    by_id = [r for r in records if r["run_id"] == token]
    if len(by_id) == 1:
        return _single(by_id[0])
    if len(by_id) > 1:
        dirs = ", ".join(r["run_dir"] for r in by_id)
        raise UserError(f"run id '{token}' names {len(by_id)} runs ({dirs}); pass the run directory instead")
    scope = [r for r in records if benchmark is None or r["benchmark"] == benchmark]
    mine = [r for r in scope if r["method"] == token]
    if not mine:
        where = f" on {benchmark}" if benchmark else ""
        known = sorted({r["method"] for r in scope})
        raise UserError(f"unknown method or run '{token}'; methods with finished runs{where}: "
                        f"{', '.join(known) or 'none'} (or give a run id / run directory)")
    benches = sorted({r["benchmark"] for r in mine})
    if len(benches) > 1:
        raise UserError(f"method '{token}' has runs on {len(benches)} benchmarks ({', '.join(benches)}); "
                        "choose one with --benchmark")
    same_spec = [r for r in mine if r["spec_hash"] == spec_hash]
    mine = same_spec or mine
    latest = max(mine, key=lambda r: (str(r.get("finished", "")), str(r["run_id"])))
    group = [r for r in mine if r["config_hash"] == latest["config_hash"] and r["spec_hash"] == latest["spec_hash"]]
    group.sort(key=lambda r: int(r["seed"]))
    return Side(token, token, latest["benchmark"], latest["spec_hash"], latest["config_hash"], group, "method")


def load_per_image(record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(ids sorted, matrices [N, C, C] in that order) of one run."""
    path = Path(record["run_dir"]) / "per_image.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, mats = np.asarray(data["ids"]).astype(str), np.asarray(data["matrices"])
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; compare needs the per-image matrices `udabench run` writes") from None
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{path} is not a per-image matrix file with 'ids' and 'matrices' ({exc})") from None
    if mats.ndim != 3 or len(ids) != len(mats):
        raise DataError(f"{path}: expected ids [N] and matrices [N, C, C], got {ids.shape} and {mats.shape}")
    order = np.argsort(ids, kind="stable")
    return ids[order], mats[order]


def _aligned(a: Side, b: Side) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    loaded = [(r, *load_per_image(r)) for r in a.records + b.records]
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
    per_class: list[tuple[str, float, float]]  # class, mean IoU of A, of B (over seeds)
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


def compare(a: Side, b: Side, resamples: int = 1000, seed: int = 0) -> Comparison:
    if (a.benchmark, a.spec_hash) != (b.benchmark, b.spec_hash):
        raise UserError(f"{a.label} is on {a.benchmark} (spec {a.spec_hash}) but {b.label} on {b.benchmark} "
                        f"(spec {b.spec_hash}); compare needs the same benchmark and protocol")
    subsets = [str(s) for s in a.records[0]["subsets"]]
    convention = str(a.records[0].get("convention", "A"))
    conv_b = {str(r.get("convention", "A")) for r in b.records}
    if conv_b != {convention}:
        raise UserError(f"{a.label} is scored with convention {convention} but {b.label} with "
                        f"{', '.join(sorted(conv_b))}; compare needs one convention")
    mats_a, mats_b, n_images = _aligned(a, b)
    boot = {s: paired_bootstrap(mats_a, mats_b, s, convention, resamples, seed) for s in subsets}
    per_class = [(n, _mean([r["iou"].get(n, math.nan) for r in a.records]),
                  _mean([r["iou"].get(n, math.nan) for r in b.records])) for n in CLASS_NAMES]
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


def no_runs_message(store: Path, benchmark: str | None = None) -> str:
    where = f" for benchmark {benchmark}" if benchmark else ""
    example = f"udabench run source-only --benchmark {benchmark}" if benchmark else HOW_TO_RUN
    return f"no finished runs{where} in the run store {store}; make one with: {example}"
