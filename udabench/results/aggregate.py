"""From result records to leaderboard rows: mean +- std over seeds per (method, config hash).

Rows are grouped by benchmark, spec hash AND validation set first, so numbers from different
protocols or scored on different images never share a mean or a table. Per-class columns are the
IoUs the headline mIoU averages (convention-B IoUs for SYNTHIA's 16/13 classes). Reported
(published) numbers come from ``reported.json`` into a separate frame; they are shown next to
reproduced rows but no code path averages them with runs.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterable

import pandas as pd

from udabench.results.matrices import headline_ious
from udabench.results.records import val_set
from udabench.taxonomy import CLASS_NAMES, SUBSETS

KEYS = ["benchmark", "spec_hash", "val_set", "method", "config_hash"]
TABLE_KEYS = ["benchmark", "spec_hash", "val_set"]
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
    """One record as a flat row: keys, seed, subset mIoUs, per-class IoUs (those the headline
    averages; NaN when an old record cannot say), compute, protocol."""
    row: dict[str, Any] = {k: str(record[k]) for k in ("benchmark", "spec_hash", "method", "config_hash")}
    row["val_set"] = val_set(record)
    row["seed"] = int(record["seed"])
    row["uda"] = bool(record.get("uda", True))
    row["name"] = str(record.get("name") or "")
    row["tags"] = ",".join(str(t) for t in record.get("tags") or [])
    for subset, value in record["miou"].items():
        row[miou_col(str(subset))] = _f(value)
    ious = headline_ious(record)
    row["classes_unknown"] = ious is None
    for name in CLASS_NAMES:
        row[iou_col(name)] = _f((ious or {}).get(name))
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
        settings=json.dumps(record.get("settings") or {}, sort_keys=True, default=str),
    )
    return row


def _joined(values: pd.Series) -> str:
    return " / ".join(sorted({str(v) for v in values if str(v)}))


BASE_COLUMNS = KEYS + ["n", "seeds", "uda", "name", "tags", "classes_unknown"]


def aggregate(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per (benchmark, spec hash, validation set, method, config hash): ``n``, ``seeds``,
    and for every metric ``<metric>`` (mean over seeds) and ``<metric> std`` (sample std, ddof=1;
    NaN for n=1).

    Metrics: ``mIoU19``/``mIoU16``/``mIoU13`` (those the records carry), ``IoU <class>`` for the 19
    classes (NaN IoUs are skipped, as in the mIoU), and compute cost. Rows are sorted by benchmark,
    spec hash, validation set, then headline mIoU descending.
    """
    rows = [flatten(r) for r in records]
    if not rows:
        return pd.DataFrame(columns=BASE_COLUMNS + list(COMPUTE_MEAN + COMPUTE_MAX) + list(PROTOCOL)
                            + ["iters", "settings"])
    df = pd.DataFrame(rows)
    subsets = [s for s in SUBSET_ORDER if miou_col(s) in df] + sorted(
        c[4:] for c in df if c.startswith("mIoU") and c[4:] not in SUBSET_ORDER)
    metrics = [miou_col(s) for s in subsets] + [iou_col(n) for n in CLASS_NAMES] + list(COMPUTE_MEAN)
    grouped = df.groupby(KEYS, sort=False, dropna=False)
    out = grouped.size().rename("n").to_frame()
    out["seeds"] = grouped["seed"].agg(lambda s: ",".join(str(v) for v in sorted(s)))
    out["uda"] = grouped["uda"].all()
    for col in ("name", "tags"):
        out[col] = grouped[col].agg(_joined)
    out["classes_unknown"] = grouped["classes_unknown"].sum()
    means, stds = grouped[metrics].mean(), grouped[metrics].std(ddof=1)
    for col in metrics:
        out[col] = means[col]
        out[f"{col} std"] = stds[col]
    for col in COMPUTE_MAX:
        out[col] = grouped[col].max()
    for col in PROTOCOL:
        out[col] = grouped[col].agg(_joined)
    out["iters"] = grouped["iters"].agg(_joined)
    out["settings"] = grouped["settings"].first()
    out["last_finished"] = grouped["finished"].max()
    out = out.reset_index()
    # Sort key: each row's own headline subset (19 for gta2cs-like, 16 for synthia2cs-like).
    out["_headline_value"] = [row.get(miou_col(row["headline"].split(" / ")[0]), math.nan)
                              for _, row in out.iterrows()]
    out = out.sort_values(TABLE_KEYS + ["_headline_value"], ascending=[True, True, True, False],
                          na_position="last", kind="stable")
    return out.drop(columns="_headline_value").reset_index(drop=True)


# --- how the configurations of one method differ ------------------------------------------------


def _flat_settings(settings: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flat_settings(value, name + "."))
        else:
            out[name] = json.dumps(value, sort_keys=True, default=str)
    return out


_SECTION_LABELS = {"method_config.": "method.", "benchmark_overrides.": "benchmark."}


def setting_differences(rows: pd.DataFrame) -> list[str]:
    """For each row, the settings in which its configuration differs from the other
    configurations of the same method in the table ('' when the method has one configuration)."""
    out = [""] * len(rows)
    positions = {m: [i for i, v in enumerate(rows["method"]) if v == m] for m in set(rows["method"])}
    for where in positions.values():
        if len(where) < 2:
            continue
        flat = [_flat_settings(json.loads(rows["settings"].iloc[i] or "{}")) for i in where]
        keys = sorted({k for f in flat for k in f if len({g.get(k) for g in flat}) > 1})
        for i, settings in zip(where, flat):
            cells = []
            for key in keys:
                label = key
                for long, short in _SECTION_LABELS.items():
                    label = label.replace(long, short, 1) if label.startswith(long) else label
                cells.append(f"{label}={settings.get(key, '-')}")
            out[i] = ", ".join(cells)  # '' when no settings were recorded to tell them apart
    return out


# --- reported (published) numbers ------------------------------------------------------------


def load_reported() -> list[dict[str, Any]]:
    """The published numbers shipped in ``udabench/results/reported.json``."""
    text = resources.files("udabench.results").joinpath("reported.json").read_text(encoding="utf-8")
    return json.loads(text)["reported"]


def reported_benchmarks() -> list[str]:
    return sorted({e["benchmark"] for e in load_reported()})


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


# --- tables: one per (benchmark, spec hash, validation set) -----------------------------------


@dataclass
class Board:
    """One leaderboard table: the reproduced rows of one protocol and validation set, plus the
    published rows. ``classes``: the per-class columns (those of the headline subset)."""

    benchmark: str
    spec_hash: str
    subsets: list[str]
    protocol: dict[str, str]
    rows: pd.DataFrame
    reported: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    val_set: str = ""

    @property
    def classes(self) -> list[str]:
        headline = self.subsets[0] if self.subsets else "19"
        return [CLASS_NAMES[i] for i in SUBSETS.get(headline, range(len(CLASS_NAMES)))]

    def caption(self) -> str:
        if self.rows.empty:
            return (f"{self.benchmark}: published numbers only (reported, never averaged with runs); "
                    "no udabench run on this benchmark yet")
        p = self.protocol
        return (f"{self.benchmark} (spec {self.spec_hash}, val {self.val_set}) | classes {p['subsets']}, "
                f"convention {p['convention']} | eval input {p['eval_input']} (HxW), logits upsampled to "
                f"label size | {p['checkpoint']} checkpoint | {p['network']} network")


def _protocol(rows: pd.DataFrame, subsets: list[str]) -> dict[str, str]:
    out = {"subsets": ", ".join(miou_col(s) for s in subsets)}
    for col in ("convention", "eval_input", "checkpoint", "network"):
        values = sorted({v for cell in rows[col] for v in str(cell).split(" / ")})
        out[col] = values[0] if len(values) == 1 else " / ".join(values) + " (varies by row)"
    return out


def _reported_subsets(reported: pd.DataFrame) -> list[str]:
    return [s for s in SUBSET_ORDER if miou_col(s) in reported and reported[miou_col(s)].notna().any()]


def reported_board(benchmark: str) -> Board | None:
    """A table of the published numbers alone (a benchmark without runs), or None without any."""
    reported = reported_frame(benchmark)
    if reported.empty:
        return None
    subsets = _reported_subsets(reported)
    rows = aggregate([])
    return Board(benchmark, "", subsets, {"subsets": ", ".join(map(miou_col, subsets))}, rows, reported,
                 [f"add a run with: udabench run source-only --benchmark {benchmark}"])


def _split_warning(bench: str, what: str, values: list[str]) -> str:
    return (f"benchmark {bench} has runs under {len(values)} {what} ({', '.join(values)}): "
            "shown as separate tables and never averaged together")


def build_boards(records: list[dict[str, Any]], benchmark: str | None = None,
                 with_reported: bool = True) -> tuple[list[Board], list[str]]:
    """Leaderboard tables and warnings (a benchmark under several spec hashes or validation sets)."""
    if benchmark is not None:
        records = [r for r in records if r["benchmark"] == benchmark]
    agg = aggregate(records)
    boards: list[Board] = []
    warnings: list[str] = []
    for bench, per_bench in agg.groupby("benchmark", sort=True):
        hashes = list(dict.fromkeys(per_bench["spec_hash"]))
        if len(hashes) > 1:
            warnings.append(_split_warning(bench, "spec hashes", hashes))
        for spec in hashes:
            vals = list(dict.fromkeys(per_bench.loc[per_bench["spec_hash"] == spec, "val_set"]))
            if len(vals) > 1:
                warnings.append(_split_warning(bench, f"validation sets under spec {spec}", vals)
                                + "; runs written before results carried a validation fingerprint are "
                                "grouped by their image count")
        reported = reported_frame(bench) if with_reported else pd.DataFrame()
        for (spec, val), rows in per_bench.groupby(["spec_hash", "val_set"], sort=False):
            rows = rows.reset_index(drop=True)
            rows["differs"] = setting_differences(rows)
            first = next(r for r in records if r["benchmark"] == bench and r["spec_hash"] == spec)
            subsets = [str(s) for s in first["subsets"]]
            notes = []
            if len(hashes) > 1:
                notes.append(f"one of {len(hashes)} spec hashes of {bench}")
            unknown = int(rows["classes_unknown"].sum())
            if unknown:
                notes.append(f"per-class IoUs of {unknown} convention-B run(s) not shown ('-'): their result.json "
                             "predates per-class convention-B IoUs and per_image.npz is missing")
            if not reported.empty:
                notes.append("reported rows: published numbers, never averaged with runs")
            boards.append(Board(bench, spec, subsets, _protocol(rows, subsets), rows, reported, notes, val))
    return boards, warnings
