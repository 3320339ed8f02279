"""Prediction panels for papers (``udabench predict RUN [RUN ...] --format panels``): validation
images in rows; the image, its ground truth and each run's prediction in columns, titled, with a
legend of the class colours. PNG, PDF or SVG at the sizes of ``udabench plot``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from udabench.results.pictures import STYLES, render
from udabench.taxonomy import CLASSES, PALETTE, SUBSETS


@dataclass
class PanelRow:
    id: str
    image: np.ndarray  # [H, W, 3] uint8, at the label size
    label: np.ndarray | None  # [H, W] trainIds (255 = ignore), None for unlabelled images
    predictions: list[np.ndarray]  # one [H, W] trainId map per run, same order as the titles


def colour(class_map: np.ndarray) -> np.ndarray:
    """trainIds -> the official palette (ignore is black)."""
    return PALETTE[np.asarray(class_map, dtype=np.uint8)]


def panels_figure(rows: list[PanelRow], titles: list[str], subset: str = "19",
                  size: str = "page") -> Any:
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    style = STYLES[size]
    if any(len(r.predictions) != len(titles) for r in rows):
        raise ValueError("every panel row needs one prediction per title")
    labelled = any(r.label is not None for r in rows)
    headers = ["image"] + (["ground truth"] if labelled else []) + list(titles)
    n_rows, n_cols = len(rows), len(headers)
    h, w = rows[0].image.shape[:2]
    width = style.classes[0]
    cell = width / n_cols
    # legend entries per row that fit the width at each size's font; the legend wraps
    classes = [CLASSES[i] for i in sorted(SUBSETS[subset])]
    per_row = {"screen": 10, "page": 7, "column": 4}[size]
    legend_rows = -(-len(classes) // per_row)
    row_in = style.font * 0.85 * 1.9 / 72  # one legend row, in inches
    title_in = style.font * 2.2 / 72
    height = n_rows * (cell - 0.02) * h / w + title_in + row_in * legend_rows + 0.1
    fig = Figure(figsize=(width, height), dpi=style.dpi)
    grid = fig.add_gridspec(n_rows, n_cols, left=0.005, right=0.995, top=1 - title_in / height,
                            bottom=(row_in * legend_rows + 0.08) / height, wspace=0.03, hspace=0.03)
    for r, row in enumerate(rows):
        cells = [row.image] + ([colour(row.label) if row.label is not None
                                else np.zeros_like(row.image)] if labelled else [])
        cells += [colour(p) for p in row.predictions]
        for c, picture in enumerate(cells):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0:
                ax.set_title(headers[c], fontsize=style.font, pad=2)
    handles = [Patch(facecolor=np.array(c.color) / 255.0, edgecolor="none", label=c.name) for c in classes]
    fig.legend(handles=handles, loc="lower center", ncol=per_row,
               fontsize=style.font * 0.85, frameon=False, handlelength=1.0, handletextpad=0.3,
               columnspacing=0.6)
    return fig


def panels_chart(rows: list[PanelRow], titles: list[str], fmt: str, subset: str = "19",
                 size: str = "page", description: str = "") -> bytes:
    return render(panels_figure(rows, titles, subset, size), fmt, description)
