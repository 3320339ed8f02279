"""Charts (``udabench plot``) as PNG, PDF or SVG: one run's per-class IoU and training curves, and
per-class bars of any number of runs or configurations with error bars over seeds.

matplotlib is driven through its object API (Figure + Agg canvas): no pyplot global state and no
display needed. Figures have a fixed size (no tight bounding box), so every chart of a kind and
size has the same dimensions. Three sizes: ``screen`` (PNG default, 1200 pixels wide, titled with
the protocol line), ``page`` (7 in, a two-column figure) and ``column`` (3.4 in, one paper column;
the vector default): paper sizes leave the title to the caption, fonts stay >= 6 pt at print size,
and the protocol line travels in the file's metadata. Per-class bars are the IoUs the headline
mIoU averages (convention-B IoUs for SYNTHIA's 16 classes).
"""
from __future__ import annotations

import io
import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from udabench.errors import DataError, UserError
from udabench.results.matrices import headline_ious
from udabench.taxonomy import CLASS_NAMES, CLASSES, SUBSETS

FORMATS = ("png", "pdf", "svg")
SIZES = ("screen", "page", "column")


@dataclass(frozen=True)
class Style:
    run: tuple[float, float]  # inches: run chart (bars over curves)
    classes: tuple[float, float]  # inches: per-class bars (+ deltas for two sides)
    font: float  # points
    dpi: int
    titled: bool  # draw the title and protocol line (screen); paper figures leave it to the caption


STYLES = {
    "screen": Style(run=(12.0, 9.0), classes=(12.0, 8.0), font=9, dpi=100, titled=True),
    "page": Style(run=(7.0, 5.6), classes=(7.0, 4.6), font=7, dpi=300, titled=False),
    "column": Style(run=(3.4, 4.4), classes=(3.4, 3.2), font=6, dpi=300, titled=False),
}
DPI = STYLES["screen"].dpi
RUN_PIXELS = tuple(int(v * DPI) for v in STYLES["screen"].run)  # (width, height)
COMPARE_PIXELS = tuple(int(v * DPI) for v in STYLES["screen"].classes)
# Okabe-Ito: distinguishable with colour-vision deficiencies, and in greyscale with the hatches.
SIDE_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000")
SIDE_HATCHES = ("", "///", "...", "xxx", "\\\\\\", "++", "oo", "--")


def chart_format(path: Path | str) -> str:
    """png/pdf/svg from a file name; a one-line error for anything else."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise UserError(f"--out {path}: charts are PNG, PDF or SVG; give a file name ending in .png, .pdf or .svg")
    return suffix


def default_size(fmt: str) -> str:
    return "screen" if fmt == "png" else "column"


def _figure(size: tuple[float, float], dpi: int) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("charts need matplotlib; install it with: pip install 'matplotlib>=3.7'") from None
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _rc(style: Style) -> Any:
    import matplotlib

    f = style.font
    return matplotlib.rc_context({
        "font.size": f, "axes.titlesize": f + 1, "axes.labelsize": f, "xtick.labelsize": f,
        "ytick.labelsize": f, "legend.fontsize": f, "lines.linewidth": 1.0 if f < 8 else 1.2,
        "hatch.linewidth": 0.5 if f < 8 else 1.0, "svg.fonttype": "none", "pdf.fonttype": 42})


def render(fig: Any, fmt: str, description: str = "") -> bytes:
    """The figure as PNG/PDF/SVG bytes; the protocol line goes into the file's metadata."""
    metadata = {"png": {"Description": description}, "pdf": {"Subject": description},
                "svg": {"Description": description}}[fmt]
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=fig.dpi, metadata=metadata)
    return buffer.getvalue()


def _small(style: Style) -> float:
    """Annotations: smaller than the labels, never below 6 pt on paper."""
    return style.font - 2 if style.titled else style.font


def _rgb(train_id: int, lighten: float = 0.0) -> tuple[float, float, float]:
    r, g, b = CLASSES[train_id].color
    return tuple((c / 255) * (1 - lighten) + lighten for c in (r, g, b))  # type: ignore[return-value]


def _value(v: Any) -> float:
    return math.nan if v is None else float(v)


def _headline(record: dict[str, Any]) -> str:
    return str(record.get("headline") or record["subsets"][0])


def _title(fig: Any, style: Style, title: str, record: dict[str, Any]) -> None:
    """The title, and under it the protocol line that makes the numbers comparable (or not)."""
    from udabench.report import protocol_line

    if not style.titled:
        return
    fig.suptitle(title, fontsize=style.font + 3, y=0.99)
    text = textwrap.fill(protocol_line(record), width=190)
    fig.text(0.5, 0.955, text, fontsize=_small(style), color="#444444", va="top", ha="center")


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


def _classes(record: dict[str, Any]) -> list[int]:
    """Train ids of the classes the headline mIoU averages."""
    return list(SUBSETS.get(_headline(record), range(len(CLASS_NAMES))))


def _class_axis(ax: Any, record: dict[str, Any], style: Style) -> None:
    """Class names under the bars; '*' marks classes outside a smaller subset (SYNTHIA's mIoU13)."""
    ids = _classes(record)
    smaller = [str(s) for s in record["subsets"] if len(SUBSETS.get(str(s), ())) < len(ids)]
    outside = set(ids) - set(SUBSETS[smaller[0]]) if smaller else set()
    ax.set_xticks(range(len(ids)))
    ax.set_xticklabels([CLASS_NAMES[i] + ("*" if i in outside else "") for i in ids],
                       rotation=40 if style.titled else 90, ha="right" if style.titled else "center")
    ax.set_xlim(-0.6, len(ids) - 0.4)
    ax.grid(axis="y", alpha=0.3, linewidth=0.5)
    ax.set_axisbelow(True)
    if outside:
        ax.text(0.995, 0.98, f"* not in mIoU{smaller[0]}", transform=ax.transAxes, ha="right", va="top",
                color="#777777")


def iou_bars(ax: Any, record: dict[str, Any], style: Style = STYLES["screen"]) -> None:
    """Per-class IoU bars in the official colours and the headline mIoU as a dashed line."""
    headline = _headline(record)
    ious = headline_ious(record) or {}
    for x, i in enumerate(_classes(record)):
        v = _value(ious.get(CLASS_NAMES[i]))
        if math.isnan(v):
            ax.text(x, 1, "n/a", ha="center", va="bottom", fontsize=_small(style), color="#777777")
            continue
        ax.bar(x, v, color=_rgb(i), edgecolor="#333333", linewidth=0.5)
        if style.titled:
            ax.text(x, v + 1, f"{v:.1f}", ha="center", va="bottom", fontsize=_small(style))
    for s in record["subsets"]:
        value = _value(record["miou"].get(str(s)))
        if not math.isnan(value):
            main = str(s) == headline
            ax.axhline(value, color="black" if main else "#777777", linestyle="--" if main else ":",
                       label=f"mIoU{s} {value:.1f}")
    ax.set_ylim(0, 105)
    ax.set_ylabel("IoU (%)")
    _class_axis(ax, record, style)
    ax.legend(loc="upper left")


def training_curves(ax_loss: Any, ax_eval: Any, metrics: list[dict[str, Any]], record: dict[str, Any]) -> None:
    """Losses against the step (left) and the evaluation mIoU points (right)."""
    from matplotlib.ticker import MaxNLocator

    losses = sorted({k for line in metrics for k in line if k.startswith("loss/")})
    for key in losses:
        pts = [(line["step"], line[key]) for line in metrics if isinstance(line.get(key), (int, float))]
        ax_loss.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None,
                     label=key.split("/", 1)[1])
    ax_loss.set_title("training losses")
    ax_loss.set_xlabel("iteration")
    ax_loss.grid(alpha=0.3, linewidth=0.5)
    if losses:
        ax_loss.legend()
    else:
        ax_loss.text(0.5, 0.5, "no metrics.jsonl", transform=ax_loss.transAxes, ha="center", color="#777777")
    for key in sorted({k for line in metrics for k in line if k.startswith("eval/mIoU")}):
        pts = [(line["step"], line[key]) for line in metrics if isinstance(line.get(key), (int, float))]
        ax_eval.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=key.split("/", 1)[1])
    headline = _headline(record)
    final = _value(record["miou"].get(headline))
    if "iters" in record and not math.isnan(final):
        ax_eval.plot([record["iters"]], [final], marker="*", markersize=9, color="black", linestyle="",
                     label=f"final mIoU{headline} {final:.1f}")
    for ax in (ax_loss, ax_eval):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
    ax_eval.set_title("evaluation")
    ax_eval.set_xlabel("iteration")
    ax_eval.set_ylabel("mIoU (%)")
    ax_eval.grid(alpha=0.3, linewidth=0.5)
    ax_eval.legend()


def run_figure(record: dict[str, Any], metrics: list[dict[str, Any]], size: str = "screen") -> Any:
    """Per-class IoU bars on top, training curves below (3 panels)."""
    style = STYLES[size]
    with _rc(style):
        fig = _figure(style.run, style.dpi)
        top = 0.9 if style.titled else 0.97
        grid = fig.add_gridspec(2, 2, height_ratios=(1.3, 1), hspace=0.55 if style.titled else 0.75,
                                wspace=0.25 if style.titled else 0.45, left=0.06 if style.titled else 0.12,
                                right=0.98, top=top, bottom=0.08)
        headline = _headline(record)
        seed = f", seed {record['seed']}" if "seed" in record else ""
        _title(fig, style, f"{record.get('method', '?')} on {record.get('benchmark', '?')}{seed}: mIoU{headline} "
                           f"{_value(record['miou'].get(headline)):.1f}   ({record.get('run_id', '')})", record)
        iou_bars(fig.add_subplot(grid[0, :]), record, style)
        training_curves(fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1]), metrics, record)
    return fig


def run_chart(record: dict[str, Any], metrics: list[dict[str, Any]], fmt: str = "png", size: str = "screen") -> bytes:
    """``run_figure`` rendered (PNG at RUN_PIXELS for the screen size)."""
    from udabench.report import protocol_line

    return render(run_figure(record, metrics, size), fmt, protocol_line(record))


# --- per-class bars of several runs or configurations --------------------------------------------


def side_stats(records: list[dict[str, Any]], ids: list[int]) -> tuple[list[float], list[float]]:
    """Per-class mean and sample std (ddof=1; NaN for one seed) over the records' headline IoUs."""
    per_record = [headline_ious(r) or {} for r in records]
    means, stds = [], []
    for i in ids:
        values = [v for v in (_value(p.get(CLASS_NAMES[i])) for p in per_record) if not math.isnan(v)]
        means.append(sum(values) / len(values) if values else math.nan)
        if len(values) > 1:
            mu = means[-1]
            stds.append(math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1)))
        else:
            stds.append(math.nan)
    return means, stds


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    mu = sum(finite) / len(finite)
    sd = math.sqrt(sum((v - mu) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else math.nan
    return mu, sd


def _check_one_protocol(sides: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    label0, first = sides[0][0], sides[0][1][0]
    for label, records in sides:
        for rec in records:
            if (rec["benchmark"], rec.get("spec_hash")) != (first["benchmark"], first.get("spec_hash")):
                raise UserError(f"{label0} is on {first['benchmark']} (spec {first.get('spec_hash')}) but {label} "
                                f"on {rec['benchmark']} (spec {rec.get('spec_hash')}); plot needs one benchmark and protocol")
    return first


def _bar_style(side: int, n_sides: int, class_id: int) -> dict[str, Any]:
    """One or two sides: the official class colours (B lighter and hatched); more: a colour each."""
    if n_sides <= 2:
        if side == 0:
            return {"color": _rgb(class_id), "edgecolor": "#333333"}
        return {"color": _rgb(class_id, 0.55), "edgecolor": _rgb(class_id), "hatch": "///"}
    return {"color": SIDE_COLOURS[side % len(SIDE_COLOURS)], "edgecolor": "#333333",
            "hatch": SIDE_HATCHES[side // len(SIDE_COLOURS) % len(SIDE_HATCHES)]}


def _legend_style(side: int, n_sides: int) -> dict[str, Any]:
    if n_sides > 2:
        bar = _bar_style(side, n_sides, 0)
        return {"facecolor": bar["color"], "edgecolor": bar["edgecolor"], "hatch": bar["hatch"]}
    return {"facecolor": "#666666" if side == 0 else "#cccccc", "edgecolor": "#333333", "hatch": "///" if side else ""}


def classes_figure(sides: list[tuple[str, list[dict[str, Any]]]], size: str = "screen") -> Any:
    """Per-class IoU bars of every side (seed means, error bars = std over seeds); for exactly two
    sides a second panel with A - B per class. Sides: (label, records of one configuration or run).
    The legend sits above the panels (never over a bar), one entry per side with its mIoU."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    first = _check_one_protocol(sides)
    style, n = STYLES[size], len(sides)
    headline, ids = _headline(first), _classes(first)
    stats = [side_stats(records, ids) for _, records in sides]
    mious = [_mean_std([_value(r["miou"].get(headline)) for r in records]) for _, records in sides]
    handles = []
    for s, (label, records) in enumerate(sides):
        m, sd = mious[s]
        text = f"{label}: mIoU{headline} {m:.1f}" + (f" ± {sd:.1f} (n={len(records)})" if not math.isnan(sd) else "")
        handles.append(Patch(label=text, linewidth=0.5, **_legend_style(s, n)))
    if n <= 2:
        handles.append(Line2D([], [], color="black", linestyle="--",
                              label=f"mIoU{headline}: dashed A" + (", dotted B" if n == 2 else "")))
    with _rc(style):
        fig = _figure(style.classes, style.dpi)
        ncol = 1 if size == "column" else 2
        title_h = 0.11 if style.titled else 0.0
        legend_h = (math.ceil(len(handles) / ncol) * 1.6 + 1.0) * style.font / 72 / style.classes[1]
        grid = fig.add_gridspec(2 if n == 2 else 1, 1, height_ratios=(1.4, 1) if n == 2 else None,
                                hspace=0.5 if style.titled else 0.9, left=0.06 if style.titled else 0.12,
                                right=0.98, top=1 - title_h - legend_h, bottom=0.12 if style.titled else 0.2)
        counts = lambda recs: f" ({len(recs)} seeds)" if len(recs) > 1 else ""  # noqa: E731
        title = " vs ".join(f"{label}{counts(recs)}" for label, recs in sides) + f" on {first['benchmark']}: mIoU{headline} "
        _title(fig, style, title + " vs ".join(f"{m:.1f}" for m, _ in mious),
               {k: v for k, v in first.items() if k != "seed"})  # the seeds are in the title
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - title_h), ncol=ncol, frameon=False)
        ax = fig.add_subplot(grid[0])
        width = 0.8 / n
        for s, (means, stds) in enumerate(stats):
            offset = (s - (n - 1) / 2) * width
            for x, (i, mu, sd) in enumerate(zip(ids, means, stds)):
                if not math.isnan(mu):
                    ax.bar(x + offset, mu, width, linewidth=0.5, yerr=None if math.isnan(sd) else sd,
                           error_kw={"elinewidth": 0.6, "capsize": 1.5, "ecolor": "#222222"}, **_bar_style(s, n, i))
        if n <= 2:
            for s, (m, _) in enumerate(mious):
                ax.axhline(m, color="black" if s == 0 else "#777777", linestyle="--" if s == 0 else ":")
        ax.set_ylim(0, 100)
        ax.set_ylabel("IoU (%)")
        _class_axis(ax, first, style)
        if n == 2:
            _delta_panel(fig.add_subplot(grid[1]), stats[0][0], stats[1][0], first, style)
    return fig


def _delta_panel(ax: Any, a: list[float], b: list[float], record: dict[str, Any], style: Style) -> None:
    deltas = [x - y for x, y in zip(a, b)]
    for x, d in enumerate(deltas):
        if math.isnan(d):
            ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=_small(style), color="#777777")
            continue
        ax.bar(x, d, 0.6, color="#2e7d32" if d >= 0 else "#c62828")
        if style.titled:
            ax.text(x, d, f"{d:+.1f}", ha="center", va="bottom" if d >= 0 else "top", fontsize=_small(style))
    ax.axhline(0, color="black", linewidth=0.8)
    span = max([abs(d) for d in deltas if not math.isnan(d)] + [1.0]) * 1.25
    ax.set_ylim(-span, span)
    ax.set_ylabel("A - B (IoU)")
    _class_axis(ax, record, style)


def classes_chart(sides: list[tuple[str, list[dict[str, Any]]]], fmt: str = "png", size: str = "screen") -> bytes:
    from udabench.report import protocol_line

    first = sides[0][1][0]
    return render(classes_figure(sides, size), fmt, protocol_line({k: v for k, v in first.items() if k != "seed"}))


def sides_figure(sides: list[tuple[str, list[dict[str, Any]]]], size: str = "screen") -> tuple[Any, str]:
    """What ``udabench plot`` draws, and the protocol line for the file's metadata: one run alone
    gets bars and its training curves; anything else per-class bars with error bars over seeds."""
    from udabench.report import protocol_line

    if len(sides) == 1 and len(sides[0][1]) == 1:
        record = sides[0][1][0]
        metrics = read_metrics(Path(record["run_dir"]) / "metrics.jsonl") if record.get("run_dir") else []
        return run_figure(record, metrics, size), protocol_line(record)
    first = sides[0][1][0]
    return classes_figure(sides, size), protocol_line({k: v for k, v in first.items() if k != "seed"})


def comparison_chart(label_a: str, records_a: list[dict[str, Any]], label_b: str,
                     records_b: list[dict[str, Any]], fmt: str = "png", size: str = "screen") -> bytes:
    """A vs B (COMPARE_PIXELS as a screen PNG): ``classes_chart`` of two sides."""
    return classes_chart([(label_a, records_a), (label_b, records_b)], fmt, size)


def write_chart(path: Path, data: bytes, overwrite: bool = False) -> Path:
    """Write a chart atomically; an existing file is replaced only with ``overwrite``."""
    from udabench.fileio import atomic_write_bytes

    path = Path(path)
    chart_format(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; nothing was written (remove it, choose another --out, or --overwrite)")
    if path.is_dir():
        raise UserError(f"{path} is a folder; --out takes a file name ending in .png, .pdf or .svg")
    atomic_write_bytes(path, data)
    return path
