"""How numbers are shown: every number travels with its protocol."""
from __future__ import annotations

import math
from typing import Any

from rich.table import Table

from udabench.taxonomy import CLASS_NAMES, SUBSETS


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def protocol_line(record: dict[str, Any]) -> str:
    """One line naming everything that makes the numbers comparable (or not)."""
    ev = record.get("eval", {})
    size = "x".join(str(s) for s in ev.get("input_size", [])) or "?"
    extras = []
    if ev.get("flip"):
        extras.append("flip")
    scales = ev.get("scales") or [1.0]
    extras.append("single scale" if list(scales) == [1.0] else f"scales {scales}")
    subsets = "/".join(record.get("subsets", []))
    parts = [
        f"{record.get('benchmark', '?')} (spec {record.get('spec_hash', '?')[:8]})",
        f"classes {subsets}, convention {record.get('convention', 'A')}",
        f"eval input {size} (HxW), logits upsampled to label size, {', '.join(extras)}",
        f"{ev.get('checkpoint', 'last')} checkpoint, {ev.get('network', 'student')} network",
    ]
    if "seed" in record:
        parts.append(f"seed {record['seed']}")
    if not record.get("uda", True):
        parts.append("uses target labels: NOT UDA")
    return " | ".join(parts)


def result_table(record: dict[str, Any], title: str | None = None) -> Table:
    """Per-class IoU and the subset means of one result record. The IoUs shown are those the
    headline mIoU averages: under convention B (16/13 classes) the convention-B IoUs of the 16
    classes, so the table averages to its own headline."""
    from udabench.results.matrices import headline_ious

    table = Table(title=title or f"{record.get('method', '')} on {record.get('benchmark', '')}",
                  caption=protocol_line(record), caption_justify="left")
    subsets = [str(s) for s in record.get("subsets", [])]
    headline = str(record.get("headline") or (subsets or ["19"])[0])
    convention_b = headline != "19" and str(record.get("convention", "A")) == "B"
    table.add_column("class")
    table.add_column("IoU (convention B)" if convention_b else "IoU", justify="right")
    for sub in subsets:
        table.add_column(f"in {sub}", justify="center")
    iou = headline_ious(record) or {}
    shown = SUBSETS[headline] if convention_b and headline in SUBSETS else range(len(CLASS_NAMES))
    for i in shown:
        name = CLASS_NAMES[i]
        marks = ["•" if i in SUBSETS[s] else "" for s in subsets]
        table.add_row(name, fmt(iou.get(name)), *marks)
    table.add_section()
    for sub in record.get("subsets", []):
        value = record.get("miou", {}).get(sub)
        table.add_row(f"[bold]mIoU{sub}[/]", f"[bold]{fmt(value)}[/]", *[""] * len(record.get("subsets", [])))
    if "pixel_accuracy" in record:
        table.add_row("pixel accuracy", fmt(record["pixel_accuracy"]), *[""] * len(record.get("subsets", [])))
    return table


def headline(record: dict[str, Any]) -> str:
    subsets = record.get("subsets", ["19"])
    miou = record.get("miou", {})
    return ", ".join(f"mIoU{s} {fmt(miou.get(s))}" for s in subsets)
