"""Leaderboard rendering: rich (split to fit the terminal), markdown, csv, latex and json.

Every table carries its protocol as a caption; reported rows are marked and footnoted with their
source and caveats; the best reproduced UDA value of a column is highlighted where it is unique
and meaningful. An empty result is an empty table in the requested format, never prose on stdout.
"""
from __future__ import annotations

import io
import json
from string import ascii_lowercase
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from udabench.results.aggregate import COMPUTE_MAX, COMPUTE_MEAN, SUBSET_ORDER, Board, iou_col, miou_col
from udabench.results.columns import KIND_NOT_UDA, KIND_REPORTED, KIND_RUN, Column, board_columns
from udabench.taxonomy import CLASS_NAMES

BEST_NOTE = "best reproduced UDA value per column (only where unique at the shown precision)"
# Columns that wrap on words instead of being kept whole (the rest never wrap).
_FOLDING = {"method": 16, "name": 12}


def _text_cell(col: Column, i: int) -> str:
    mark = col.marks[i] if col.marks else ""
    return f"{col.cells[i]} [{mark}]" if mark else col.cells[i]


def _footnote_lines(footnotes: list[str]) -> list[str]:
    return [f"[R{i}] {text}" for i, text in enumerate(footnotes, 1)]


def _width(col: Column) -> int:
    width = max([len(col.header)] + [len(_text_cell(col, i)) for i in range(len(col.cells))])
    return min(width, _FOLDING.get(col.key, width)) + 3  # content + 3-space gutter


def _chunks(keys: list[Column], values: list[Column], width: int) -> list[list[Column]]:
    """Split value columns into runs that fit ``width`` next to the key columns."""
    # No outer edge or padding (show_edge/pad_edge off): the first column has no gutter.
    base = sum(_width(k) for k in keys) - 3
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


def render_rich(boards: list[Board], warnings: list[str], console: Console, per_class: bool = False,
                columns: list[str] | None = None) -> None:
    for line in warnings:
        console.print(Text(f"warning: {line}", style="bold yellow"))
    for board in boards:
        cols, footnotes = board_columns(board, per_class, short=True, fmt="rich", columns=columns)
        # How configurations differ is prose, not a column: one note line per configuration.
        settings = next((c for c in cols if c.key == "settings"), None)
        cols = [c for c in cols if c is not settings] or cols
        keys = [c for c in cols if c.group == "key"] or cols[:1]
        values = [c for c in cols if c not in keys]
        kinds = next((c.cells for c in cols if c.key == "kind"), None)
        n_rows = len(board.rows)
        chunks = _chunks(keys, values, console.width)
        for part, chunk in enumerate(chunks):
            title = f"leaderboard: {board.benchmark}" + (f" ({part + 1}/{len(chunks)})" if len(chunks) > 1 else "")
            table = Table(title=title, title_justify="left", caption=board.caption(), caption_justify="left",
                          box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
            for col in keys + chunk:
                folds = col.key in _FOLDING
                table.add_column(col.header, justify="right" if col.numeric else "left", no_wrap=not folds,
                                 overflow="fold" if folds else "ellipsis",
                                 min_width=min(_FOLDING.get(col.key, 0), _width(col) - 3) or None)
            for i in range(len(cols[0].cells)):
                if i == n_rows and i:
                    table.add_section()
                cells = [Text(_text_cell(c, i), style="bold green" if c.best[i] else "") for c in keys + chunk]
                if kinds is not None and kinds[i] != KIND_RUN:
                    style = "yellow" if kinds[i] == KIND_REPORTED else "magenta"
                    for cell, col in zip(cells, keys + chunk):
                        if col.key == "kind":
                            cell.stylize(style)
                table.add_row(*cells)
            console.print(table)
        notes = _footnote_lines(footnotes) + _settings_notes(board, settings)
        notes += [f"note: {n}" for n in board.notes] + [f"bold green: {BEST_NOTE}"]
        for note in notes:
            console.print(Text(note, style="dim"))
        console.print()


def _settings_notes(board: Board, settings: Column | None) -> list[str]:
    if settings is None:
        return []
    rows = board.rows
    return [f"{rows['method'][i]} config {str(rows['config_hash'][i])[:8]} differs in: {settings.cells[i]}"
            for i in range(len(rows)) if settings.cells[i] not in ("-", "")]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(cols: list[Column]) -> list[str]:
    out = ["| " + " | ".join(_md_escape(c.header) for c in cols) + " |",
           "|" + "|".join("---:" if c.numeric else ":---" for c in cols) + "|"]
    for i in range(len(cols[0].cells)):
        cells = [f"**{_md_escape(_text_cell(c, i))}**" if c.best[i] else _md_escape(_text_cell(c, i)) for c in cols]
        out.append("| " + " | ".join(cells) + " |")
    return out


def to_markdown(boards: list[Board], warnings: list[str], per_class: bool = False,
                columns: list[str] | None = None) -> str:
    out = [f"> warning: {w}\n" for w in warnings]
    if not boards:
        return "\n".join(out + _md_table(empty_columns(columns)) + [""])
    for board in boards:
        cols, footnotes = board_columns(board, per_class, short=False, fmt="markdown", columns=columns)
        out.append(f"### {board.benchmark}" + (f" (spec {board.spec_hash})\n" if board.spec_hash else "\n"))
        out.append(f"*{_md_escape(board.caption())}*\n")
        out += _md_table(cols)
        out.append("")
        out += [f"- {_md_escape(f)}" for f in _footnote_lines(footnotes) + board.notes + [f"bold: {BEST_NOTE}"]]
        out.append("")
    return "\n".join(out)


def empty_columns(columns: list[str] | None) -> list[Column]:
    """The header of a table without rows: the columns asked for, else method and the mIoUs."""
    ids = columns or ["method"] + [miou_col(s) for s in SUBSET_ORDER]
    return [Column(i, i, [], [], numeric=i != "method") for i in ids]


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}


def tex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _tex_mark(i: int) -> str:
    """Footnote marks a, b, ..., z, aa, ab ..."""
    return ascii_lowercase[i] if i < 26 else _tex_mark(i // 26 - 1) + ascii_lowercase[i % 26]


def _latex_table(cols: list[Column], n_rows: int, caption: str, notes: list[str], footnotes: list[str]) -> list[str]:
    """One table; ``caption`` is LaTeX already."""
    marks = {f"R{i}": _tex_mark(i - 1) for i in range(1, len(footnotes) + 1)}
    out = [r"\begin{table}[t]", r"\centering", r"\small", r"\caption{" + caption + "}",
           r"\begin{tabular}{@{}" + "".join("r" if c.numeric else "l" for c in cols) + "@{}}", r"\toprule",
           " & ".join(tex(c.header) for c in cols) + r" \\", r"\midrule"]
    for i in range(len(cols[0].cells)):
        if i == n_rows and i:
            out.append(r"\midrule")
        cells = []
        for c in cols:
            cell = rf"\textbf{{{tex(c.cells[i])}}}" if c.best[i] else tex(c.cells[i])
            if c.marks and c.marks[i]:
                cell += rf"\textsuperscript{{{marks[c.marks[i]]}}}"
            cells.append(cell)
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    lines = [rf"\textsuperscript{{{_tex_mark(i)}}}\,{tex(f)}" for i, f in enumerate(footnotes)] + [tex(n) for n in notes]
    if lines:
        out += [r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize"]
        out += [line + r"\par" for line in lines]
        out.append(r"\end{minipage}")
    out += [r"\end{table}", ""]
    return out


def to_latex(boards: list[Board], warnings: list[str], per_class: bool = False,
             columns: list[str] | None = None) -> str:
    """booktabs tables (``\\usepackage{booktabs}``); sources of reported rows as table notes."""
    out = [r"% udabench leaderboard; needs \usepackage{booktabs}"] + [f"% warning: {w}" for w in warnings]
    if not boards:
        return "\n".join(out + _latex_table(empty_columns(columns), 0, "no finished runs", [], []))
    for board in boards:
        cols, footnotes = board_columns(board, per_class, short=True, fmt="latex", columns=columns)
        caption = tex(board.caption())
        n_seeds = sorted(set(board.rows["n"]))
        if len(n_seeds) == 1:
            caption += rf" | mean $\pm$ std over {n_seeds[0]} seed(s)"
        if any(any(c.best) for c in cols):
            caption += " | bold: " + tex(BEST_NOTE)
        out += _latex_table(cols, len(board.rows), caption, board.notes, footnotes)
    return "\n".join(out)


# --- raw numbers: csv and json ----------------------------------------------------------------

_RAW = {"method": ["method"], "name": ["name"], "kind": ["kind"], "config": ["config_hash"],
        "settings": ["differs"], "n": ["n"], "seeds": ["seeds"], "network": ["network"], "iters": ["iters"],
        "train-time": ["train_seconds"], "GPU-h": ["gpu_hours"], "img/s": ["images_per_second"],
        "peak-mem": ["peak_memory_bytes"]}
_TABLE_ID = ["kind", "benchmark", "spec_hash", "val_set"]
_REPORTED_EXTRA = ["udabench_method", "architecture", "source", "caveats"]


def _raw_names(ident: str, classes: list[str], subsets: list[str]) -> list[str]:
    if ident == "classes":
        return [x for c in classes for x in (iou_col(c), f"{iou_col(c)} std")]
    if ident == "miou":
        return [x for s in subsets for x in (miou_col(s), f"{miou_col(s)} std")]
    if ident == "compute":
        return list(COMPUTE_MEAN + COMPUTE_MAX)
    if ident in _RAW:
        return _RAW[ident]
    if ident in CLASS_NAMES:
        return [iou_col(ident), f"{iou_col(ident)} std"]
    return [ident, f"{ident} std"]  # mIoU19/16/13 (parse_columns checked the ids)


def _default_raw(per_class: bool, classes: list[str], subsets: list[str]) -> list[str]:
    cols = [*_TABLE_ID, "method", "name", "config_hash", "n", "seeds", "uda"]
    if per_class:
        cols += _raw_names("classes", classes, subsets)
    cols += _raw_names("miou", classes, subsets) + list(COMPUTE_MEAN + COMPUTE_MAX)
    return cols + ["convention", "eval_input", "checkpoint", "network", "iters", "differs", "tags"]


def flat_frame(boards: list[Board], per_class: bool = False, columns: list[str] | None = None) -> pd.DataFrame:
    """Raw numbers of every table (reproduced then reported rows), for csv/json."""
    frames = []
    for board in boards:
        if columns is None:
            wanted = _default_raw(per_class, board.classes, board.subsets)
        else:
            wanted = _TABLE_ID + [x for ident in columns for x in _raw_names(ident, board.classes, board.subsets)]
        mine = board.rows.copy()
        mine.insert(0, "kind", [KIND_RUN if u else KIND_NOT_UDA for u in mine["uda"]])
        frames.append(mine.reindex(columns=list(dict.fromkeys(wanted))))
        if not board.reported.empty:
            rep = board.reported.copy()
            rep.insert(0, "kind", KIND_REPORTED)
            rep["spec_hash"], rep["val_set"] = "", ""
            keep = [c for c in dict.fromkeys(wanted) if c in rep] + (_REPORTED_EXTRA if columns is None else [])
            frames.append(rep[keep])
    if not frames:
        every = [str(s) for s in SUBSET_ORDER]
        names = _default_raw(per_class, list(CLASS_NAMES), every) if columns is None else \
            _TABLE_ID + [x for ident in columns for x in _raw_names(ident, list(CLASS_NAMES), every)]
        return pd.DataFrame(columns=list(dict.fromkeys(names)))
    return pd.concat(frames, ignore_index=True)


def to_csv(boards: list[Board], per_class: bool = False, columns: list[str] | None = None) -> str:
    buffer = io.StringIO()
    flat_frame(boards, per_class, columns).to_csv(buffer, index=False, float_format="%.4f")
    return buffer.getvalue()


def _jsonable(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records")) if not frame.empty else []  # NaN -> null


def to_json(boards: list[Board], warnings: list[str], per_class: bool = False,
            columns: list[str] | None = None) -> str:
    tables = []
    for board in boards:
        flat = flat_frame([board], per_class, columns)
        kind = flat["kind"]
        tables.append({
            "benchmark": board.benchmark, "spec_hash": board.spec_hash, "val_set": board.val_set,
            "subsets": board.subsets, "protocol": board.protocol, "caption": board.caption(),
            "notes": board.notes,
            "rows": _jsonable(flat[kind.values != KIND_REPORTED].dropna(axis=1, how="all")),
            "reported": _jsonable(flat[kind.values == KIND_REPORTED].dropna(axis=1, how="all")),
        })
    return json.dumps({"warnings": warnings, "tables": tables}, indent=2)
