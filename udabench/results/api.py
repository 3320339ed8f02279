"""The results as Python objects, for notebooks and scripts: the functions the CLI uses.

    from udabench.results import api
    runs = api.load_runs("runs")                        # one row per run (pandas), with its status
    table = api.leaderboard("runs", benchmark="minicity-gta2cs")   # mean/std per configuration
    result = api.compare("runs", "clst", "source-only")            # bootstrap CI over images
    fig = api.plot("runs", ["clst", "source-only"], size="column") # matplotlib Figure

Every function reads the store of an output folder (``<output_dir>/store.sqlite``) through the same
checks as the CLI: runs whose directory or result.json is gone or changed are left out, with a
``StoreNotice`` warning saying how many and how to clean up. Words naming runs (``"clst"``) are
those the CLI accepts: method names, run names, config hash prefixes, run ids, run directories.
See docs/results.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from udabench.results.aggregate import Board, aggregate, build_boards, flatten
from udabench.results.compare import Comparison
from udabench.results.select import Side, resolve
from udabench.results.view import FINISHED, StoreNotice, StoreView, emit, open_view

__all__ = ["Board", "Comparison", "Side", "StoreNotice", "boards", "compare", "leaderboard", "load_records",
           "load_runs", "plot", "sides", "store"]


def store(output_dir: Path | str = "runs", benchmark: str | None = None, reindex: bool = False) -> StoreView:
    """The checked store of an output folder (rows with their status); notices as warnings."""
    view = open_view(output_dir, benchmark, rebuild=reindex)
    emit(view.notices, None)
    return view


def _view(source: Path | str | StoreView, benchmark: str | None = None) -> StoreView:
    return source if isinstance(source, StoreView) else store(source, benchmark)


def load_records(source: Path | str | StoreView = "runs", benchmark: str | None = None) -> list[dict[str, Any]]:
    """The results that count (finished, present, newest of each configuration and seed), each the
    run's result.json plus ``run_dir``, ``status``, ``settings`` and ``provenance``."""
    view = _view(source, benchmark)
    return [r for r in view.records if benchmark is None or r["benchmark"] == benchmark]


def load_runs(source: Path | str | StoreView = "runs", benchmark: str | None = None,
              status: Iterable[str] = (FINISHED,)) -> pd.DataFrame:
    """One row per run: keys, seed, ``mIoU<subset>``, ``IoU <class>`` (the IoUs the headline
    averages), compute, protocol, plus ``run_id``, ``run_dir``, ``status``. ``status`` picks rows:
    finished (default), superseded, missing, changed."""
    view = _view(source, benchmark)
    rows = []
    for r in view.having(*status):
        if benchmark is None or r["benchmark"] == benchmark:
            rows.append({**flatten(r), "run_id": r["run_id"], "run_dir": r["run_dir"], "status": r["status"]})
    return pd.DataFrame(rows)


def leaderboard(source: Path | str | StoreView | list[dict[str, Any]] = "runs",
                benchmark: str | None = None) -> pd.DataFrame:
    """Mean and std over seeds per (benchmark, spec hash, validation set, method, config hash), as
    ``udabench leaderboard`` computes them; ``source`` may also be a list of records."""
    records = source if isinstance(source, list) else load_records(source, benchmark)
    return aggregate(r for r in records if benchmark is None or r["benchmark"] == benchmark)


def boards(source: Path | str | StoreView | list[dict[str, Any]] = "runs", benchmark: str | None = None,
           with_reported: bool = True) -> tuple[list[Board], list[str]]:
    """The leaderboard's tables and warnings; render them with ``udabench.results.tables``
    (``to_latex``, ``to_markdown``, ``to_csv``, ``to_json``)."""
    records = source if isinstance(source, list) else load_records(source, benchmark)
    return build_boards(records, benchmark, with_reported)


def sides(source: Path | str | StoreView, words: Iterable[str], benchmark: str | None = None) -> list[Side]:
    """The configuration (or run) each word names; refuses words that fit several."""
    view = _view(source)
    out: list[Side] = []
    for word in words:
        out.append(resolve(word, view, benchmark or (out[0].benchmark if out else None), out[0] if out else None))
    return out


def compare(source: Path | str | StoreView, a: str, b: str, benchmark: str | None = None,
            resamples: int = 1000, seed: int = 0) -> Comparison:
    """``udabench compare A B``: per-class IoU, mIoU differences, paired bootstrap interval over
    images (``.bootstrap``), Welch interval over seeds (``.seeds``) and ``.verdict()``."""
    from udabench.results.compare import compare as run_compare

    side_a, side_b = sides(source, [a, b], benchmark)
    return run_compare(side_a, side_b, resamples, seed)


def plot(source: Path | str | StoreView, words: Iterable[str], benchmark: str | None = None,
         size: str = "screen", out: Path | str | None = None, overwrite: bool = False) -> Any:
    """``udabench plot``: a matplotlib Figure (per-class bars with error bars over seeds; one run:
    bars and training curves); written to ``out`` (.png/.pdf/.svg) when given."""
    from udabench.results import pictures

    fig, protocol = pictures.sides_figure([(s.label, s.records) for s in sides(source, list(words), benchmark)], size)
    if out is not None:
        pictures.write_chart(Path(out), pictures.render(fig, pictures.chart_format(out), protocol), overwrite)
    return fig
