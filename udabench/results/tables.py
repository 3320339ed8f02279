"""Leaderboard rendering: rich (split to fit the terminal), markdown, csv, latex and json.

Every table carries its protocol as a caption; reported rows are marked and footnoted with their
source and caveats; the best reproduced UDA value of each column is highlighted.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from udabench.results.aggregate import COMPUTE_MAX, COMPUTE_MEAN, Board, iou_col, miou_col
from udabench.taxonomy import CLASS_NAMES

SHORT_NAMES = {"sidewalk": "sidew.", "building": "build.", "traffic light": "light",
               "traffic sign": "sign", "vegetation": "veget.", "motorcycle": "motor.", "bicycle": "bike"}
KIND_RUN, KIND_NOT_UDA, KIND_REPORTED = "run", "not UDA", "reported"


@dataclass
class Column:
    header: str
    cells: list[str]
    best: list[bool]
    numeric: bool = True


def _isnan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _pm(mean: Any, std: Any, digits: int = 1) -> str:
    if _isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if _isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _duration(seconds: Any) -> str:
    if _isnan(seconds):
        return "-"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _best(values: list[float], candidates: list[bool], higher: bool) -> list[bool]:
    """Mark the best value among candidate rows (only when at least two candidates have one)."""
    pool = [v for v, c in zip(values, candidates) if c and not _isnan(v)]
    if len(pool) < 2:
        return [False] * len(values)
    target = max(pool) if higher else min(pool)
    return [c and not _isnan(v) and v == target for v, c in zip(values, candidates)]


def board_columns(board: Board, per_class: bool, short: bool) -> tuple[list[Column], list[Column], list[str]]:
    """(key columns, value columns, footnotes) of a board: reproduced rows, then reported rows."""
    rows, rep = board.rows, board.reported
    n_rows, n_rep = len(rows), len(rep)
    kinds = [KIND_RUN if u else KIND_NOT_UDA for u in rows["uda"]] + [KIND_REPORTED] * n_rep
    footnotes: list[str] = []
    names = list(rows["method"])
    for i, (_, r) in enumerate(rep.iterrows(), 1):
        mark = f"R{i}"
        footnotes.append(f"[{mark}] {r['method']}: {r['source']}; {r['architecture']}"
                         + (f"; caveats: {r['caveats']}" if r["caveats"] else ""))
        names.append(f"{r['method']} [{mark}]")
    candidates = [k == KIND_RUN for k in kinds]
    keys = [
        Column("method", names, [False] * len(names), numeric=False),
        Column("kind", kinds, [False] * len(kinds), numeric=False),
        Column("config", [str(c)[:8] for c in rows["config_hash"]] + ["-"] * n_rep, [False] * len(kinds), numeric=False),
        Column("n", [str(n) for n in rows["n"]] + ["-"] * n_rep, [False] * len(kinds)),
    ]
    if "varies by row" in board.protocol.get("network", ""):
        keys.append(Column("network", list(rows["network"]) + ["-"] * n_rep, [False] * len(kinds), numeric=False))

    def metric(col: str, header: str, with_std: bool) -> Column:
        mine = list(rows[col]) if col in rows else [math.nan] * n_rows
        theirs = list(rep[col]) if col in rep else [math.nan] * n_rep
        stds = list(rows[f"{col} std"]) if with_std and f"{col} std" in rows else [math.nan] * n_rows
        cells = [_pm(m, s) for m, s in zip(mine, stds)] + [_pm(v, math.nan) for v in theirs]
        return Column(header, cells, _best(mine + theirs, candidates, higher=True))

    values = [metric(miou_col(s), miou_col(s), True) for s in board.subsets]
    classes = [metric(iou_col(n), SHORT_NAMES.get(n, n) if short else n, False) for n in CLASS_NAMES] if per_class else []
    pad = ["-"] * n_rep
    train = list(rows["train_seconds"]) + [math.nan] * n_rep
    # Zero GPU-hours / peak memory mean a CPU run: shown as "-" rather than as a misleading best.
    gpu_h = [v if not _isnan(v) and v > 0 else math.nan for v in rows["gpu_hours"]] + [math.nan] * n_rep
    ips = list(rows["images_per_second"]) + [math.nan] * n_rep
    mem = [v if not _isnan(v) and v > 0 else math.nan for v in rows["peak_memory_bytes"]] + [math.nan] * n_rep
    compute = [
        Column("train", [_duration(v) for v in train[:n_rows]] + pad, _best(train, candidates, higher=False)),
        Column("GPU-h", ["-" if _isnan(v) else f"{v:.2f}" for v in gpu_h[:n_rows]] + pad,
               _best(gpu_h, candidates, higher=False)),
        Column("img/s", ["-" if _isnan(v) else f"{v:.1f}" for v in ips[:n_rows]] + pad, _best(ips, candidates, higher=True)),
        Column("peak mem", ["-" if _isnan(v) else f"{v / 2**30:.1f} GiB" for v in mem[:n_rows]] + pad,
               _best(mem, candidates, higher=False)),
    ]
    values += [c for c in compute if any(cell != "-" for cell in c.cells)] + classes
    return keys, values, footnotes


def _width(col: Column) -> int:
    return max([len(col.header)] + [len(c) for c in col.cells]) + 3  # content + 3-space gutter


_METHOD_MIN = 16  # the method column wraps on words down to this width before columns are split off


def _chunks(keys: list[Column], values: list[Column], width: int) -> list[list[Column]]:
    """Split value columns into runs that fit ``width`` next to the key columns."""
    # No outer edge or padding (show_edge/pad_edge off): the first column has no gutter.
    base = min(_width(keys[0]), _METHOD_MIN + 3) + sum(_width(k) for k in keys[1:]) - 3
    out: list[list[Column]] = [[]]
    used = base
    for col in values:
        w = _width(col)
        if out[-1] and used + w > width:
            out.append([])
            used = base
        out[-1].append(col)
        used += w
    return out


def render_rich(boards: list[Board], warnings: list[str], console: Console, per_class: bool = False) -> None:
    for line in warnings:
        console.print(Text(f"warning: {line}", style="bold yellow"))
    for board in boards:
        keys, values, footnotes = board_columns(board, per_class, short=True)
        n_rows = len(board.rows)
        chunks = _chunks(keys, values, console.width)
        for part, cols in enumerate(chunks):
            title = f"leaderboard: {board.benchmark}" + (f" ({part + 1}/{len(chunks)})" if len(chunks) > 1 else "")
            table = Table(title=title, title_justify="left", caption=board.caption(), caption_justify="left",
                          box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
            for j, col in enumerate(keys + cols):
                table.add_column(col.header, justify="right" if col.numeric else "left",
                                 no_wrap=j > 0, overflow="fold" if j == 0 else "ellipsis")
            for i in range(len(keys[0].cells)):
                if i == n_rows and i:
                    table.add_section()
                cells = [Text(c.cells[i], style="bold green" if c.best[i] else "") for c in keys + cols]
                if keys[1].cells[i] != KIND_RUN:
                    cells[1].stylize("yellow" if keys[1].cells[i] == KIND_REPORTED else "magenta")
                table.add_row(*cells)
            console.print(table)
        for note in footnotes + [f"note: {n}" for n in board.notes] + ["bold green: best reproduced UDA value per column"]:
            console.print(Text(note, style="dim"))
        console.print()


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(boards: list[Board], warnings: list[str], per_class: bool = False) -> str:
    out = [f"> warning: {w}\n" for w in warnings]
    for board in boards:
        keys, values, footnotes = board_columns(board, per_class, short=False)
        cols = keys + values
        out.append(f"### {board.benchmark} (spec {board.spec_hash})\n")
        out.append(f"*{_md_escape(board.caption())}*\n")
        out.append("| " + " | ".join(_md_escape(c.header) for c in cols) + " |")
        out.append("|" + "|".join("---:" if c.numeric else ":---" for c in cols) + "|")
        for i in range(len(cols[0].cells)):
            cells = [f"**{_md_escape(c.cells[i])}**" if c.best[i] else _md_escape(c.cells[i]) for c in cols]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        out += [f"- {_md_escape(f)}" for f in footnotes + board.notes + ["bold: best reproduced UDA value per column"]]
        out.append("")
    return "\n".join(out)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}


def _tex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(boards: list[Board], warnings: list[str], per_class: bool = False) -> str:
    out = [f"% warning: {w}" for w in warnings]
    for board in boards:
        keys, values, footnotes = board_columns(board, per_class, short=True)
        cols = keys + values
        out += [r"\begin{table}[t]", r"\centering", r"\small",
                r"\begin{tabular}{" + "".join("r" if c.numeric else "l" for c in cols) + "}", r"\hline",
                " & ".join(_tex(c.header) for c in cols) + r" \\", r"\hline"]
        for i in range(len(cols[0].cells)):
            if i == len(board.rows) and i:
                out.append(r"\hline")
            cells = [rf"\textbf{{{_tex(c.cells[i])}}}" if c.best[i] else _tex(c.cells[i]) for c in cols]
            out.append(" & ".join(cells) + r" \\")
        out += [r"\hline", r"\end{tabular}",
                r"\caption{" + _tex(board.caption()) + "".join(" " + _tex(f) for f in footnotes) + "}",
                r"\end{table}", ""]
    return "\n".join(out)


def flat_frame(boards: list[Board], per_class: bool = False) -> pd.DataFrame:
    """Raw numbers of every table (reproduced then reported rows), for csv/json."""
    frames = []
    for board in boards:
        metrics = [miou_col(s) for s in board.subsets]
        if per_class:
            metrics += [iou_col(n) for n in CLASS_NAMES]
        mine = board.rows.copy()
        mine.insert(0, "kind", [KIND_RUN if u else KIND_NOT_UDA for u in mine["uda"]])
        keep = ["kind", "benchmark", "spec_hash", "method", "config_hash", "n", "seeds", "uda"]
        keep += [c for m in metrics for c in (m, f"{m} std") if c in mine]
        keep += list(COMPUTE_MEAN + COMPUTE_MAX) + ["convention", "eval_input", "checkpoint", "network", "iters"]
        frames.append(mine[keep])
        if not board.reported.empty:
            rep = board.reported.copy()
            rep.insert(0, "kind", KIND_REPORTED)
            rep["spec_hash"] = ""
            frames.append(rep[["kind", "benchmark", "spec_hash", "method"] + [m for m in metrics if m in rep]
                              + ["udabench_method", "architecture", "source", "caveats"]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def to_csv(boards: list[Board], per_class: bool = False) -> str:
    buffer = io.StringIO()
    flat_frame(boards, per_class).to_csv(buffer, index=False, float_format="%.4f")
    return buffer.getvalue()


def _jsonable(frame: pd.DataFrame) -> list[dict[str, Any]]:
    rows = json.loads(frame.to_json(orient="records")) if not frame.empty else []
    return rows  # pandas writes NaN as null


def to_json(boards: list[Board], warnings: list[str], per_class: bool = False) -> str:
    tables = []
    for board in boards:
        flat = flat_frame([board], per_class)
        tables.append({
            "benchmark": board.benchmark, "spec_hash": board.spec_hash, "subsets": board.subsets,
            "protocol": board.protocol, "caption": board.caption(), "notes": board.notes,
            "rows": _jsonable(flat[flat["kind"] != KIND_REPORTED].dropna(axis=1, how="all")),
            "reported": _jsonable(flat[flat["kind"] == KIND_REPORTED].dropna(axis=1, how="all")),
        })
    return json.dumps({"warnings": warnings, "tables": tables}, indent=2)
