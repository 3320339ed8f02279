"""The columns a leaderboard table can show, and which ones a format shows by default.

Every column has an id a user can name in ``--columns`` (``method``, ``name``, ``kind``,
``config``, ``settings``, ``n``, ``seeds``, ``network``, ``iters``, a class name, ``mIoU19`` ...,
``train-time``, ``GPU-h``, ``img/s``, ``peak-mem``) and groups stand for several (``classes``,
``miou``, ``compute``). Defaults follow the papers: per-class columns, then the mIoUs.
The best value of a column is marked only where it is meaningful: among reproduced UDA rows,
unique at the shown precision, and not 0 or missing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from udabench.errors import UserError
from udabench.registry import did_you_mean
from udabench.results.aggregate import Board, iou_col, miou_col
from udabench.taxonomy import CLASS_NAMES

SHORT_NAMES = {"sidewalk": "sidew.", "building": "build.", "traffic light": "light",
               "traffic sign": "sign", "vegetation": "veget.", "motorcycle": "motor.", "bicycle": "bike"}
KIND_RUN, KIND_NOT_UDA, KIND_REPORTED = "run", "not UDA", "reported"
GROUPS = ("classes", "miou", "compute")


@dataclass
class Column:
    key: str  # the id --columns names
    header: str
    cells: list[str]
    best: list[bool]
    numeric: bool = True
    group: str = "key"  # key | class | miou | compute
    marks: list[str] = field(default_factory=list)  # footnote marks per row (method column)


def isnan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def pm(mean: Any, std: Any, digits: int = 1) -> str:
    if isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def duration(seconds: Any) -> str:
    if isnan(seconds):
        return "-"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def best_marks(values: list[float], candidates: list[bool], higher: bool,
               show: Callable[[float], str]) -> list[bool]:
    """Mark the best value among candidate rows: only with two or more candidates having a value,
    only when that best value is unique as shown (a tie at the table's precision is no winner),
    and never a 0 (an untrained class, or a CPU run's GPU-hours)."""
    pool = [(v, i) for i, (v, c) in enumerate(zip(values, candidates)) if c and not isnan(v)]
    if len(pool) < 2:
        return [False] * len(values)
    target = max(v for v, _ in pool) if higher else min(v for v, _ in pool)
    winners = [i for v, i in pool if show(v) == show(target)]
    if len(winners) != 1 or target == 0:
        return [False] * len(values)
    return [i == winners[0] for i in range(len(values))]


def _name_cell(name: str, tags: str) -> str:
    """A configuration's run name(s) and tags: 'advent [ablation]'."""
    return (str(name) or "-") + (f" [{tags}]" if tags else "")


def _fixed(digits: int) -> Callable[[float], str]:
    return lambda v: "-" if isnan(v) else f"{v:.{digits}f}"


def all_columns(board: Board, short: bool) -> tuple[list[Column], list[str]]:
    """Every column a board can show (reproduced rows, then reported rows) and its footnotes."""
    rows, rep = board.rows, board.reported
    n_rows, n_rep = len(rows), len(rep)
    n = n_rows + n_rep
    kinds = [KIND_RUN if u else KIND_NOT_UDA for u in rows["uda"]] + [KIND_REPORTED] * n_rep
    candidates = [k == KIND_RUN for k in kinds]
    footnotes = []
    for i, (_, r) in enumerate(rep.iterrows(), 1):
        footnotes.append(f"{r['method']}: {r['source']}; {r['architecture']}"
                         + (f"; caveats: {r['caveats']}" if r["caveats"] else ""))
    none = [False] * n
    pad = ["-"] * n_rep

    def key(col_id: str, header: str, cells: list[str], numeric: bool = False) -> Column:
        return Column(col_id, header, cells, none, numeric)

    method = key("method", "method", list(rows["method"]) + list(rep["method"] if n_rep else []))
    method.marks = [""] * n_rows + [f"R{i}" for i in range(1, n_rep + 1)]
    cols = [method,
            key("name", "name", [_name_cell(n, t) for n, t in zip(rows["name"], rows["tags"])] + pad),
            key("kind", "kind", kinds),
            key("config", "config", [str(c)[:8] for c in rows["config_hash"]] + pad),
            key("settings", "differs in", [str(v) or "-" for v in rows.get("differs", [""] * n_rows)] + pad),
            key("n", "n", [str(v) for v in rows["n"]] + pad, numeric=True),
            key("seeds", "seeds", [str(v) for v in rows["seeds"]] + pad),
            key("network", "network", list(rows["network"]) + pad),
            key("iters", "iters", [str(v) for v in rows["iters"]] + pad, numeric=True)]

    def metric(col: str, col_id: str, header: str, group: str) -> Column:
        mine = list(rows[col]) if col in rows else [math.nan] * n_rows
        theirs = list(rep[col]) if col in rep else [math.nan] * n_rep
        stds = list(rows[f"{col} std"]) if f"{col} std" in rows else [math.nan] * n_rows
        stds = stds if group == "miou" else [math.nan] * n_rows  # class columns: means only, as papers
        cells = [pm(m, s) for m, s in zip(mine, stds)] + [pm(v, math.nan) for v in theirs]
        return Column(col_id, header, cells, best_marks(mine + theirs, candidates, True, _fixed(1)), group=group)

    cols += [metric(iou_col(c), c, SHORT_NAMES.get(c, c) if short else c, "class") for c in board.classes]
    cols += [metric(miou_col(s), miou_col(s), miou_col(s), "miou") for s in board.subsets]

    def compute(col_id: str, values: list[float], higher: bool, show: Callable[[float], str]) -> Column:
        padded = values + [math.nan] * n_rep
        return Column(col_id, col_id, [show(v) for v in values] + pad,
                      best_marks(padded, candidates, higher, show), group="compute")

    # Zero GPU-hours / peak memory mean a CPU run: shown as "-" rather than as a misleading best.
    positive = lambda col: [v if not isnan(v) and v > 0 else math.nan for v in rows[col]]  # noqa: E731
    cols += [compute("train-time", list(rows["train_seconds"]), False, duration),
             compute("GPU-h", positive("gpu_hours"), False, _fixed(2)),
             compute("img/s", list(rows["images_per_second"]), True, _fixed(1)),
             compute("peak-mem", positive("peak_memory_bytes"), False,
                     lambda v: "-" if isnan(v) else f"{v / 2**30:.1f} GiB")]
    return cols, footnotes


def _has_values(col: Column, n_rows: int) -> bool:
    return any(c not in ("-", "") for c in col.cells[:n_rows])


def default_ids(board: Board, cols: list[Column], per_class: bool, fmt: str) -> list[str]:
    """The columns a format shows unless --columns says otherwise."""
    n_rows = len(board.rows)
    by_id = {c.key: c for c in cols}
    ids = ["method"]
    if _has_values(by_id["name"], n_rows):
        ids.append("name")
    if fmt == "latex":  # paper tables: no kind/config/compute columns unless asked
        if len(set(board.rows["n"])) > 1:
            ids.append("n")
    else:
        ids += ["kind", "config"]
        if _has_values(by_id["settings"], n_rows):
            ids.append("settings")
        ids.append("n")
        if "varies by row" in board.protocol.get("network", ""):
            ids.append("network")
    if per_class:
        ids += [c.key for c in cols if c.group == "class"]
    ids += [c.key for c in cols if c.group == "miou"]
    if fmt != "latex":
        ids += [c.key for c in cols if c.group == "compute" and _has_values(c, n_rows)]
    return ids


KEY_IDS = ("method", "name", "kind", "config", "settings", "n", "seeds", "network", "iters")
COMPUTE_IDS = ("train-time", "GPU-h", "img/s", "peak-mem")  # not "train": that is a class
MIOU_IDS = tuple(miou_col(s) for s in ("19", "16", "13"))


def parse_columns(text: str | None) -> list[str] | None:
    """``--columns`` as a list of known ids (checked before any work), or None for the defaults."""
    if text is None:
        return None
    ids = [part.strip() for part in text.split(",") if part.strip()]
    known = KEY_IDS + MIOU_IDS + COMPUTE_IDS + GROUPS + tuple(CLASS_NAMES)
    for ident in ids:
        if ident not in known:
            raise UserError(f"--columns: unknown column '{ident}'{did_you_mean(ident, list(known))}; known: "
                            f"{', '.join(KEY_IDS + MIOU_IDS + COMPUTE_IDS + GROUPS)} or a class name")
    if not ids:
        raise UserError("--columns: name at least one column (e.g. --columns method,classes,miou)")
    return ids


def select(cols: list[Column], ids: list[str]) -> list[Column]:
    """Columns in the order asked; group ids expand to their members; a column this table does
    not have (a class outside its subsets, mIoU19 on a 16-class table) is left out."""
    by_id = {c.key: c for c in cols}
    group_of = {"classes": "class", "miou": "miou", "compute": "compute"}
    out: list[Column] = []
    for ident in ids:
        members = [c for c in cols if c.group == group_of[ident]] if ident in group_of else [by_id.get(ident)]
        out += [c for c in members if c is not None and c not in out]
    return out or cols[:1]


def board_columns(board: Board, per_class: bool, short: bool, fmt: str = "rich",
                  columns: list[str] | None = None) -> tuple[list[Column], list[str]]:
    """(columns in display order, footnotes) of a board for a format."""
    cols, footnotes = all_columns(board, short)
    chosen = select(cols, columns if columns is not None else default_ids(board, cols, per_class, fmt))
    return chosen, footnotes
