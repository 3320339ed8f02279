"""From result records to leaderboard rows: mean +- std over seeds per (method, config hash).

Rows are grouped by benchmark AND spec hash first, so numbers from different protocols never share
a mean or a table. Reported (published) numbers come from ``reported.json`` into a separate frame;
they are shown next to reproduced rows but no code path averages them with runs.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterable

import pandas as pd

from udabench.taxonomy import CLASS_NAMES

KEYS = ["benchmark", "spec_hash", "method", "config_hash"]
SUBSET_ORDER = ("19", "16", "13")
# Compute cost: means over seeds, except peak memory (the worst seed is what a user must provision).
COMPUTE_MEAN = ("train_seconds", "wall_seconds", "gpu_hours", "images_per_second")
COMPUTE_MAX = ("peak_memory_bytes",)
PROTOCOL = ("subsets", "headline", "convention", "eval_input", "network", "checkpoint")


def miou_col(subset: str) -> str:
    return f"mIoU{subset}"


def iou_col(name: str) -> str:
    return f"IoU {name}"


def _f(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def eval_descriptor(record: dict[str, Any]) -> str:
    """Evaluation input as HxW plus any test-time augmentation (part of what makes numbers comparable)."""
    ev = record.get("eval") or {}
    size = "x".join(str(s) for s in ev.get("input_size", [])) or "?"
    extras = []
    if ev.get("flip"):
        extras.append("flip")
    scales = list(ev.get("scales") or [1.0])
    if scales != [1.0]:
        extras.append("scales " + ",".join(f"{s:g}" for s in scales))
    return " ".join([size, *extras])


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """One record as a flat row: keys, seed, subset mIoUs, per-class IoUs, compute, protocol."""
    row: dict[str, Any] = {k: str(record[k]) for k in KEYS}
    row["seed"] = int(record["seed"])
    row["uda"] = bool(record.get("uda", True))
    for subset, value in record["miou"].items():
        row[miou_col(str(subset))] = _f(value)
    for name in CLASS_NAMES:
        row[iou_col(name)] = _f(record["iou"].get(name))
    compute = record.get("compute") or {}
    for key in COMPUTE_MEAN + COMPUTE_MAX:
        row[key] = _f(compute.get(key))
    subsets = [str(s) for s in record["subsets"]]
    ev = record.get("eval") or {}
    row.update(
        subsets="/".join(subsets), headline=str(record.get("headline") or subsets[0]),
        convention=str(record.get("convention", "A")), eval_input=eval_descriptor(record),
        network=str(ev.get("network", "?")), checkpoint=str(ev.get("checkpoint", "?")),
        iters=record.get("iters"), finished=str(record.get("finished", "")),
    )
    return row


def _joined(values: pd.Series) -> str:
    return " / ".join(sorted({str(v) for v in values}))


def aggregate(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per (benchmark, spec hash, method, config hash): ``n``, ``seeds``, and for every
    metric ``<metric>`` (mean over seeds) and ``<metric> std`` (sample std, ddof=1; NaN for n=1).

    Metrics: ``mIoU19``/``mIoU16``/``mIoU13`` (those the records carry), ``IoU <class>`` for the 19
    classes (NaN IoUs are skipped, as in the mIoU), and compute cost. Rows are sorted by benchmark,
    spec hash, then headline mIoU descending.
    """
    rows = [flatten(r) for r in records]
    if not rows:
        return pd.DataFrame(columns=KEYS + ["uda", "n", "seeds"])
    df = pd.DataFrame(rows)
    subsets = [s for s in SUBSET_ORDER if miou_col(s) in df] + sorted(
        c[4:] for c in df if c.startswith("mIoU") and c[4:] not in SUBSET_ORDER)
    metrics = [miou_col(s) for s in subsets] + [iou_col(n) for n in CLASS_NAMES] + list(COMPUTE_MEAN)
    grouped = df.groupby(KEYS, sort=False, dropna=False)
    out = grouped.size().rename("n").to_frame()
    out["seeds"] = grouped["seed"].agg(lambda s: ",".join(str(v) for v in sorted(s)))
    out["uda"] = grouped["uda"].all()
    means, stds = grouped[metrics].mean(), grouped[metrics].std(ddof=1)
    for col in metrics:
        out[col] = means[col]
        out[f"{col} std"] = stds[col]
    for col in COMPUTE_MAX:
        out[col] = grouped[col].max()
    for col in PROTOCOL:
        out[col] = grouped[col].agg(_joined)
    out["iters"] = grouped["iters"].agg(_joined)
    out["last_finished"] = grouped["finished"].max()
    out = out.reset_index()
    # Sort key: each row's own headline subset (19 for gta2cs-like, 16 for synthia2cs-like).
    out["_headline_value"] = [row.get(miou_col(row["headline"].split(" / ")[0]), math.nan)
                              for _, row in out.iterrows()]
    out = out.sort_values(["benchmark", "spec_hash", "_headline_value"], ascending=[True, True, False],
                          na_position="last", kind="stable")
    return out.drop(columns="_headline_value").reset_index(drop=True)


# --- reported (published) numbers ------------------------------------------------------------


def load_reported() -> list[dict[str, Any]]:
    """The published numbers shipped in ``udabench/results/reported.json``."""
    text = resources.files("udabench.results").joinpath("reported.json").read_text(encoding="utf-8")
    return json.loads(text)["reported"]


def reported_frame(benchmark: str | None = None) -> pd.DataFrame:
    """Reported rows (of one benchmark): method, mIoU/IoU columns (no std, no n), source, caveats."""
    rows = []
    for entry in load_reported():
        if benchmark is not None and entry["benchmark"] != benchmark:
            continue
        row: dict[str, Any] = {
            "benchmark": entry["benchmark"], "method": entry["method"],
            "udabench_method": entry.get("udabench_method") or "",
            "architecture": entry.get("architecture", ""), "source": entry["source"],
            "caveats": "; ".join(entry.get("caveats", [])),
        }
        for subset, value in entry["miou"].items():
            row[miou_col(subset)] = _f(value)
        for name in CLASS_NAMES:
            row[iou_col(name)] = _f(entry.get("iou", {}).get(name))
        rows.append(row)
    return pd.DataFrame(rows)


# --- tables: one per (benchmark, spec hash) ---------------------------------------------------


@dataclass
class Board:
    """One leaderboard table: the reproduced rows of one protocol, plus the published rows."""

    benchmark: str
    spec_hash: str
    subsets: list[str]
    protocol: dict[str, str]
    rows: pd.DataFrame
    reported: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def caption(self) -> str:
        p = self.protocol
        return (f"{self.benchmark} (spec {self.spec_hash}) | classes {p['subsets']}, convention "
                f"{p['convention']} | eval input {p['eval_input']} (HxW), logits upsampled to label size | "
                f"{p['checkpoint']} checkpoint | {p['network']} network")


def _protocol(rows: pd.DataFrame, subsets: list[str]) -> dict[str, str]:
    out = {"subsets": ", ".join(miou_col(s) for s in subsets)}
    for col in ("convention", "eval_input", "checkpoint", "network"):
        values = sorted({v for cell in rows[col] for v in str(cell).split(" / ")})
        out[col] = values[0] if len(values) == 1 else " / ".join(values) + " (varies by row)"
    return out


def build_boards(records: list[dict[str, Any]], benchmark: str | None = None,
                 with_reported: bool = True) -> tuple[list[Board], list[str]]:
    """Leaderboard tables and warnings (e.g. a benchmark under several spec hashes)."""
    if benchmark is not None:
        records = [r for r in records if r["benchmark"] == benchmark]
    agg = aggregate(records)
    boards: list[Board] = []
    warnings: list[str] = []
    if agg.empty:
        return boards, warnings
    for bench, per_bench in agg.groupby("benchmark", sort=True):
        hashes = list(dict.fromkeys(per_bench["spec_hash"]))
        if len(hashes) > 1:
            warnings.append(
                f"benchmark {bench} has runs under {len(hashes)} spec hashes ({', '.join(hashes)}): "
                "different protocols, shown as separate tables and never averaged together")
        reported = reported_frame(bench) if with_reported else pd.DataFrame()
        for spec in hashes:
            rows = per_bench[per_bench["spec_hash"] == spec].reset_index(drop=True)
            first = next(r for r in records if r["benchmark"] == bench and r["spec_hash"] == spec)
            subsets = [str(s) for s in first["subsets"]]
            notes = []
            if len(hashes) > 1:
                notes.append(f"one of {len(hashes)} spec hashes of {bench}")
            if not reported.empty:
                notes.append("reported rows: published numbers, never averaged with runs")
            boards.append(Board(bench, spec, subsets, _protocol(rows, subsets), rows, reported, notes))
    return boards, warnings
