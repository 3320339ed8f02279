"""Charts as PNG images (``udabench plot``): one run's per-class IoU and training curves, and a
side-by-side per-class comparison of two runs or methods.

matplotlib is driven through its object API (Figure + Agg canvas): no pyplot global state and no
display needed. Figures have a fixed size in pixels (no tight bounding box), so every chart of a
kind has the same dimensions. Classes are drawn in their official Cityscapes colours; classes the
headline mIoU does not score are hatched and faded.
"""
from __future__ import annotations

import io
import json
import math
import textwrap
from pathlib import Path
from typing import Any

from udabench.errors import DataError, UserError
from udabench.taxonomy import CLASS_NAMES, CLASSES, SUBSETS

DPI = 100
RUN_FIGSIZE = (12.0, 9.0)  # inches: 1200 x 900 pixels at DPI
COMPARE_FIGSIZE = (12.0, 8.0)  # 1200 x 800 pixels
RUN_PIXELS = (int(RUN_FIGSIZE[0] * DPI), int(RUN_FIGSIZE[1] * DPI))  # (width, height)
COMPARE_PIXELS = (int(COMPARE_FIGSIZE[0] * DPI), int(COMPARE_FIGSIZE[1] * DPI))


def _figure(size: tuple[float, float]) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("charts need matplotlib; install it with: pip install 'matplotlib>=3.7'") from None
    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _rgb(train_id: int, lighten: float = 0.0) -> tuple[float, float, float]:
    r, g, b = CLASSES[train_id].color
    return tuple((c / 255) * (1 - lighten) + lighten for c in (r, g, b))  # type: ignore[return-value]


def _value(v: Any) -> float:
    return math.nan if v is None else float(v)


def _title(fig: Any, title: str, record: dict[str, Any]) -> None:
    """The title, and under it the protocol line that makes the numbers comparable (or not)."""
    from udabench.report import protocol_line

    fig.suptitle(title, fontsize=12, y=0.99)
    text = textwrap.fill(protocol_line(record), width=190)
    fig.text(0.5, 0.955, text, fontsize=8, color="#444444", va="top", ha="center")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a run's metrics.jsonl (empty when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n} is not valid JSON ({exc.msg}); expected one object per line") from None
        if not isinstance(item, dict) or "step" not in item:
            raise DataError(f"{path}:{n}: expected an object with a 'step' key")
        lines.append(item)
    return lines


def _not_scored(headline: str) -> set[int]:
    return set(range(len(CLASS_NAMES))) - set(SUBSETS.get(headline, range(len(CLASS_NAMES))))


def _class_axis(ax: Any, headline: str) -> None:
    ax.set_xticks(range(len(CLASS_NAMES)))
    ax.set_xticklabels(CLASS_NAMES, rotation=40, ha="right", fontsize=9)
    for i in _not_scored(headline):
        ax.get_xticklabels()[i].set_color("#999999")
    ax.set_xlim(-0.6, len(CLASS_NAMES) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def iou_bars(ax: Any, record: dict[str, Any]) -> None:
    """Per-class IoU bars in the official colours and the headline mIoU as a dashed line."""
    headline = str(record.get("headline") or record["subsets"][0])
    skip = _not_scored(headline)
    values = [_value(record["iou"].get(n)) for n in CLASS_NAMES]
    for i, v in enumerate(values):
        if math.isnan(v):
            ax.text(i, 1, "n/a", ha="center", va="bottom", fontsize=7, color="#777777")
            continue
        ax.bar(i, v, color=_rgb(i), edgecolor="#333333", linewidth=0.6,
               alpha=0.35 if i in skip else 1.0, hatch="//" if i in skip else None)
        ax.text(i, v + 1, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    miou = _value(record["miou"].get(headline))
    if not math.isnan(miou):
        ax.axhline(miou, color="black", linestyle="--", linewidth=1.2, label=f"mIoU{headline} {miou:.1f}")
    for s in record["subsets"]:
        if str(s) != headline and not math.isnan(_value(record["miou"].get(s))):
            ax.axhline(_value(record["miou"][s]), color="#777777", linestyle=":", linewidth=1,
                       label=f"mIoU{s} {_value(record['miou'][s]):.1f}")
    ax.set_ylim(0, 105)
    ax.set_ylabel("IoU (%)")
    _class_axis(ax, headline)
    if skip:
        ax.text(0.995, 0.98, f"hatched: not in mIoU{headline}", transform=ax.transAxes,
                ha="right", va="top", fontsize=8, color="#777777")
    ax.legend(loc="upper left", fontsize=9)


def training_curves(ax_loss: Any, ax_eval: Any, metrics: list[dict[str, Any]], record: dict[str, Any]) -> None:
    """Losses against the step (left) and the evaluation mIoU points (right)."""
    losses = sorted({k for line in metrics for k in line if k.startswith("loss/")})
    for key in losses:
        pts = [(line["step"], line[key]) for line in metrics if isinstance(line.get(key), (int, float))]
        ax_loss.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None,
                     linewidth=1.2, label=key.split("/", 1)[1])
    ax_loss.set_title("training losses", fontsize=10)
    ax_loss.set_xlabel("iteration")
    ax_loss.grid(alpha=0.3)
    if losses:
        ax_loss.legend(fontsize=8)
    else:
        ax_loss.text(0.5, 0.5, "no metrics.jsonl", transform=ax_loss.transAxes, ha="center", color="#777777")
    evals = sorted({k for line in metrics for k in line if k.startswith("eval/mIoU")})
    for key in evals:
        pts = [(line["step"], line[key]) for line in metrics if isinstance(line.get(key), (int, float))]
        ax_eval.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key.split("/", 1)[1])
    headline = str(record.get("headline") or record["subsets"][0])
    final = _value(record["miou"].get(headline))
    if "iters" in record and not math.isnan(final):
        ax_eval.plot([record["iters"]], [final], marker="*", markersize=13, color="black", linestyle="",
                     label=f"final mIoU{headline} {final:.1f}")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_eval):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_eval.set_title("evaluation", fontsize=10)
    ax_eval.set_xlabel("iteration")
    ax_eval.set_ylabel("mIoU (%)")
    ax_eval.grid(alpha=0.3)
    ax_eval.legend(fontsize=8)


def run_chart(record: dict[str, Any], metrics: list[dict[str, Any]]) -> bytes:
    """PNG (RUN_PIXELS): per-class IoU bars on top, training curves below, protocol as footer."""
    fig = _figure(RUN_FIGSIZE)
    grid = fig.add_gridspec(2, 2, height_ratios=(1.3, 1), hspace=0.55, wspace=0.2,
                            left=0.06, right=0.98, top=0.9, bottom=0.08)
    headline = str(record.get("headline") or record["subsets"][0])
    miou = _value(record["miou"].get(headline))
    seed = f", seed {record['seed']}" if "seed" in record else ""
    _title(fig, f"{record.get('method', '?')} on {record.get('benchmark', '?')}{seed}: "
                f"mIoU{headline} {miou:.1f}   ({record.get('run_id', '')})", record)
    iou_bars(fig.add_subplot(grid[0, :]), record)
    training_curves(fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1]), metrics, record)
    return _png(fig)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def comparison_chart(label_a: str, records_a: list[dict[str, Any]], label_b: str,
                     records_b: list[dict[str, Any]]) -> bytes:
    """PNG (COMPARE_PIXELS): per-class IoU of A (solid) and B (hatched), then A - B per class.

    Several records on a side (seeds of one configuration) are averaged, like ``udabench compare``.
    """
    first = records_a[0]
    for rec in records_b:
        if (rec["benchmark"], rec.get("spec_hash")) != (first["benchmark"], first.get("spec_hash")):
            raise UserError(f"{label_a} is on {first['benchmark']} (spec {first.get('spec_hash')}) but {label_b} "
                            f"on {rec['benchmark']} (spec {rec.get('spec_hash')}); plot needs one benchmark and protocol")
    headline = str(first.get("headline") or first["subsets"][0])
    skip = _not_scored(headline)
    a = [_mean([_value(r["iou"].get(n)) for r in records_a]) for n in CLASS_NAMES]
    b = [_mean([_value(r["iou"].get(n)) for r in records_b]) for n in CLASS_NAMES]
    ma = _mean([_value(r["miou"].get(headline)) for r in records_a])
    mb = _mean([_value(r["miou"].get(headline)) for r in records_b])
    fig = _figure(COMPARE_FIGSIZE)
    grid = fig.add_gridspec(2, 1, height_ratios=(1.4, 1), hspace=0.5, left=0.06, right=0.98,
                            top=0.89, bottom=0.12)
    seeds = lambda recs: f" ({len(recs)} seeds)" if len(recs) > 1 else ""  # noqa: E731
    _title(fig, f"{label_a}{seeds(records_a)} vs {label_b}{seeds(records_b)} on {first['benchmark']}: "
                f"mIoU{headline} {ma:.1f} vs {mb:.1f} ({ma - mb:+.1f})",
           {k: v for k, v in first.items() if k != "seed"})  # the seeds are in the title
    top = fig.add_subplot(grid[0])
    width = 0.4
    for i in range(len(CLASS_NAMES)):
        fade = 0.35 if i in skip else 1.0
        if not math.isnan(a[i]):
            top.bar(i - width / 2, a[i], width, color=_rgb(i), edgecolor="#333333", linewidth=0.6, alpha=fade)
        if not math.isnan(b[i]):
            top.bar(i + width / 2, b[i], width, color=_rgb(i, 0.55), edgecolor=_rgb(i), hatch="///",
                    linewidth=0.6, alpha=fade)
    top.axhline(ma, color="black", linestyle="--", linewidth=1.2)
    top.axhline(mb, color="#777777", linestyle=":", linewidth=1.4)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    top.legend(handles=[Patch(facecolor="#666666", edgecolor="#333333", label=f"A = {label_a}"),
                        Patch(facecolor="#cccccc", edgecolor="#666666", hatch="///", label=f"B = {label_b}"),
                        Line2D([], [], color="black", linestyle="--", label=f"A mIoU{headline} {ma:.1f}"),
                        Line2D([], [], color="#777777", linestyle=":", label=f"B mIoU{headline} {mb:.1f}")],
               loc="upper left", fontsize=8, ncol=2)
    top.set_ylim(0, 105)
    top.set_ylabel("IoU (%)")
    _class_axis(top, headline)
    bottom = fig.add_subplot(grid[1])
    deltas = [x - y for x, y in zip(a, b)]
    for i, d in enumerate(deltas):
        if math.isnan(d):
            bottom.text(i, 0, "n/a", ha="center", va="bottom", fontsize=7, color="#777777")
            continue
        bottom.bar(i, d, 0.6, color="#2e7d32" if d >= 0 else "#c62828", alpha=0.35 if i in skip else 1.0)
        bottom.text(i, d, f"{d:+.1f}", ha="center", va="bottom" if d >= 0 else "top", fontsize=7)
    bottom.axhline(0, color="black", linewidth=0.8)
    finite = [abs(d) for d in deltas if not math.isnan(d)]
    span = max(finite + [1.0]) * 1.25
    bottom.set_ylim(-span, span)
    bottom.set_ylabel("A - B (IoU points)")
    _class_axis(bottom, headline)
    return _png(fig)


def write_chart(path: Path, data: bytes) -> Path:
    """Write a chart atomically; an existing file is never overwritten."""
    from udabench.data.pngio import atomic_write_bytes

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"--out {path}: charts are PNG images; give a file name ending in .png")
    if path.exists():
        raise UserError(f"{path} already exists; nothing was written (remove it or choose another --out)")
    atomic_write_bytes(path, data)
    return path
