"""Score prediction PNGs made anywhere against a target dataset's ground truth (``udabench score``).

The target dataset's descriptor (``udabench.data.registry``) lists the ground-truth files of a split
and decodes them; nothing here names a dataset. Predictions are matched to ground truth by image
id (the file name is ``<id>.png`` or ``<id>`` followed by ``_``, ``-`` or ``.`` and anything, e.g.
Cityscapes' ``<city>_<seq>_<frame>_leftImg8bit.png``), in a flat folder or a mirrored tree. Each
pair is reduced, in parallel, to a count table ``[20, 256]``: ground-truth trainId (row 19 =
ignored) x raw prediction value (for colour PNGs, the trainId of the colour, 19 for black, 255 when
it is not in the palette). The encoding is resolved on these tables after one pass, so
auto-detection sees every file without decoding twice.

Encodings (``auto`` picks one only when unambiguous). Each has a spelling for "no class", scored
as the official Cityscapes evaluator scores a void labelId: a false negative of the true class and
a false positive of nobody (an extra "void" prediction column 19):
- ``trainid``: 1 channel, values 0..18; 255 = no class.
- ``labelid``: 1 channel, the dataset's own label ids (Cityscapes labelIds 0..33, what the official
  evaluator takes); ids outside the 19 evaluated classes (0 = unlabeled...) and 255 = no class.
- ``color``: RGB in the official palette of the 19 classes; black = no class; any other colour is
  an error.
Auto: RGB -> color; 1 channel with some value 19..max id -> labelid; 1 channel with every value in
0..18 or 255 is valid in both encodings -> error asking for ``--encoding``.
"""
from __future__ import annotations

import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from udabench.data.layouts import shown
from udabench.data.pngio import read_png
from udabench.data.registry import get_dataset
from udabench.data.spec import DatasetSpec
from udabench.errors import DataError, UserError
from udabench.metrics import Score, apply_convention, iou_from_matrix, nanmean
from udabench.taxonomy import CLASS_NAMES, CLASSES, IGNORE, NUM_CLASSES, SUBSETS
from udabench.engine.devices import torch_threads

ENCODINGS = ("trainid", "labelid", "color")
VOID = NUM_CLASSES  # prediction column of "no class" (void labelIds, trainId 255, black)
SHOW = 10  # files named in one error message
DEFAULT_TARGET = "cityscapes"

_STEM = re.compile(r"^(.+?_\d+_\d+)(?=$|[._-])")
_SEPARATORS = "._-"
_COLOUR_LUT: torch.Tensor | None = None


def _colour_lut() -> torch.Tensor:
    """24-bit colour -> trainId, VOID for black, 255 elsewhere: one gather per image."""
    global _COLOUR_LUT
    if _COLOUR_LUT is None:
        lut = torch.full((1 << 24,), IGNORE, dtype=torch.uint8)
        lut[0] = VOID  # black: the colour of the void labelIds (and of udabench's ignore)
        for c in CLASSES:
            lut[(c.color[0] << 16) | (c.color[1] << 8) | c.color[2]] = c.train_id
        _COLOUR_LUT = lut
    return _COLOUR_LUT


def column_map(encoding: str, kind: str | DatasetSpec = DEFAULT_TARGET) -> np.ndarray:
    """Raw prediction value (0..255) -> column 0..18, VOID, or -1 (outside the encoding)."""
    cols = np.full(256, -1, dtype=np.int64)
    if encoding == "trainid":
        cols[:NUM_CLASSES] = np.arange(NUM_CLASSES)
        cols[IGNORE] = VOID
    elif encoding == "color":
        cols[: NUM_CLASSES + 1] = np.arange(NUM_CLASSES + 1)  # the colour table's codes
    elif encoding == "labelid":
        spec = get_dataset(kind)
        top = min(spec.max_label_value, 255)
        lut = spec.lut[: top + 1].astype(np.int64)
        cols[: top + 1] = np.where(lut == IGNORE, VOID, lut)
        cols[IGNORE] = VOID
    else:
        raise UserError(f"unknown encoding '{encoding}'; expected auto, {', '.join(ENCODINGS)}")
    return cols


def listing(paths: Iterable[object], total: int | None = None) -> str:
    """'a, b, ... (N in all)' naming at most SHOW items."""
    items = [shown(p) for p in paths]
    total = len(items) if total is None else total
    more = f", ... ({total} in all)" if total > SHOW else f" ({total} in all)"
    return ", ".join(items[:SHOW]) + more


def find_ground_truth(target_root: Path, split: str = "val",
                      kind: str | DatasetSpec = DEFAULT_TARGET) -> dict[str, Path]:
    """image id -> ground-truth label file of ``split`` of the target dataset ``kind``."""
    return get_dataset(kind).ground_truth(Path(target_root), split)


def stem_of(name: str) -> str | None:
    """The Cityscapes stem of a file name (``frankfurt_000000_000294_pred.png`` -> its stem)."""
    m = _STEM.match(name[:-4] if name.lower().endswith(".png") else name)
    return m.group(1) if m else None


def match_id(name: str, ids: "set[str] | dict[str, object]") -> str | None:
    """The id a file name belongs to: ``<id>.png`` or ``<id>`` + one of ``._-`` + anything; the
    longest such id wins (``a_b_pred.png`` is ``a_b`` when both ``a`` and ``a_b`` exist)."""
    base = name[:-4] if name.lower().endswith(".png") else name
    if base in ids:
        return base
    for cut in range(len(base) - 1, 0, -1):
        if base[cut] in _SEPARATORS and base[:cut] in ids:
            return base[:cut]
    return None


def match_predictions(pred_dir: Path, gt: dict[str, Path]) -> dict[str, Path]:
    """id -> prediction file for every ground-truth id; ONE DataError for any mismatch."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise UserError(f"prediction folder {pred_dir} does not exist")
    by_id: dict[str, list[Path]] = {}
    extra: list[Path] = []
    unusable: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(pred_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue  # .DS_Store and friends
            path = Path(dirpath) / name
            image_id = match_id(name, gt) if name.lower().endswith(".png") else None
            if image_id is None:
                extra.append(path)
            elif not os.path.isfile(path):  # a FIFO would hang the reader; a link may loop
                unusable.append(path)
            else:
                by_id.setdefault(image_id, []).append(path)
    problems = []
    missing = [s for s in gt if s not in by_id]
    if unusable:
        problems.append(f"{len(unusable)} prediction files are not readable regular files (broken "
                        f"or looping links, FIFOs): " + listing(unusable))
    if missing:
        problems.append(f"{len(missing)} validation images have no prediction: "
                        + listing(missing))
    if extra:
        problems.append(f"{len(extra)} files match no validation image (expected one PNG named "
                        f"<image id>[_suffix].png per image): " + listing(extra))
    dupes = {s: p for s, p in by_id.items() if len(p) > 1}
    if dupes:
        problems.append(f"{len(dupes)} images have several predictions: "
                        + listing(" and ".join(map(str, p)) for p in dupes.values()))
    if problems:
        raise DataError(f"predictions in {shown(pred_dir)} do not match the {len(gt)} validation "
                        f"images: " + "; ".join(problems))
    return {s: by_id[s][0] for s in gt}


@dataclass
class PairCounts:
    """One prediction/label pair reduced to a count table (or the reason it could not be)."""

    id: str
    pred: Path
    gt: Path
    kind: str = ""  # 'gray' (1 channel) | 'color' (RGB)
    size: tuple[int, int] = (0, 0)  # (H, W) of the ground truth
    counts: np.ndarray | None = None  # int64 [20, 256]
    problem: str = ""  # '<category>: <detail>' when the pair cannot be scored
    bad_colour: tuple[int, int, int] | None = None  # first colour outside the palette, if any


def count_pair(stem: str, pred_path: Path, gt_path: Path,
               kind: str | DatasetSpec = DEFAULT_TARGET) -> PairCounts:
    """Decode both PNGs and count (gt row, raw prediction value) pairs; problems are returned."""
    out = PairCounts(stem, pred_path, gt_path)
    # A broken ground truth is the dataset's fault: its descriptor raises at once.
    spec = get_dataset(kind)
    gt = spec.label_ids(read_png(gt_path), gt_path)
    if gt.dtype != torch.uint8:  # wider ids: map them here; 8-bit ids are folded after counting
        gt = spec.map_ids(gt)
    out.size = (int(gt.shape[0]), int(gt.shape[1]))
    try:
        pred = read_png(pred_path)
    except DataError as exc:
        out.problem = f"unreadable: {shown(pred_path)} ({exc})"
        return out
    if pred.dtype != torch.uint8 or pred.shape[0] not in (1, 3):
        depth = "16-bit" if pred.dtype != torch.uint8 else f"{pred.shape[0]}-channel"
        out.problem = f"format: {shown(pred_path)} ({depth}; expected 8-bit grey or RGB)"
        return out
    if tuple(pred.shape[1:]) != out.size:
        out.problem = (f"size: {shown(pred_path)} ({pred.shape[2]}x{pred.shape[1]}, ground truth "
                       f"{out.size[1]}x{out.size[0]})")
        return out
    if pred.shape[0] == 3:
        out.kind = "color"
        p = pred.to(torch.int32)
        key = (p[0] << 16) | (p[1] << 8) | p[2]
        values = _colour_lut()[key.reshape(-1)]
        if bool((values == IGNORE).any()):  # name the colour: the table only says "not ours"
            first = int(torch.nonzero(values == IGNORE)[0])
            out.bad_colour = tuple(int(v) for v in pred.reshape(3, -1)[:, first])
    else:
        out.kind = "gray"
        values = pred.reshape(-1)
    # One bincount over id * 256 + value: the two uint8 planes interleaved and read as uint16
    # (cheaper than integer arithmetic on 2M pixels); rows are then folded to trainIds.
    planes = (values.numpy(), gt.reshape(-1).numpy())
    idx = np.stack(planes if sys.byteorder == "little" else planes[::-1], -1).view(np.uint16)
    idx = torch.from_numpy(idx.reshape(-1)).to(torch.int32)
    raw = torch.bincount(idx, minlength=256 * 256).reshape(256, 256)
    out.counts = torch.zeros(NUM_CLASSES + 1, 256, dtype=torch.int64).index_add_(
        0, _gt_rows(spec) if gt.dtype == torch.uint8 else _TRAIN_ID_ROWS, raw).numpy()
    return out


def _rows(train_ids: np.ndarray) -> torch.Tensor:
    """Count-table row of each of 256 values: the trainId, or 19 (ignored)."""
    return torch.from_numpy(np.where(train_ids == IGNORE, NUM_CLASSES, train_ids).astype(np.int64))


_TRAIN_ID_ROWS = _rows(np.array([i if i < NUM_CLASSES else IGNORE for i in range(256)]))


def _gt_rows(spec: DatasetSpec) -> torch.Tensor:
    """Raw 8-bit ground-truth id -> count-table row, through the dataset's lookup table."""
    return _rows(np.asarray(spec.lut[:256]))


def resolve_encoding(pairs: list[PairCounts], requested: str = "auto",
                     kind: str | DatasetSpec = DEFAULT_TARGET) -> str:
    """The encoding of the whole set (auto-detection rules in the module docstring)."""
    kinds = {p.kind for p in pairs}
    top_id = get_dataset(kind).max_label_value
    if requested == "auto":
        if kinds == {"color"}:
            return "color"
        if kinds == {"gray"}:
            present = np.nonzero(sum(p.counts.sum(0) for p in pairs))[0]  # type: ignore[union-attr]
            if ((present >= NUM_CLASSES) & (present <= top_id)).any():
                return "labelid"  # values above the ids are then reported as outside them
            if ((present > top_id) & (present != IGNORE)).any():
                return "trainid"  # outside both: reported against the trainIds
            raise UserError(
                "cannot tell the encoding of the predictions: every value is in 0..18 or 255, "
                "valid as trainIds and as label ids; pass --encoding trainid (0..18, as the "
                "network predicts) or --encoding labelid (the dataset's ids, as the official "
                "evaluator takes)")
        rgb = [p.pred for p in pairs if p.kind == "color"]
        raise DataError(f"predictions mix RGB and single-channel PNGs ({len(rgb)} of {len(pairs)} "
                        f"are RGB: " + listing(rgb) + "); write them all in one encoding")
    if requested == "color" and kinds != {"color"}:
        grey = [p.pred for p in pairs if p.kind == "gray"]
        raise DataError(f"--encoding color expects RGB PNGs; {len(grey)} are single-channel: "
                        + listing(grey) + "; pass --encoding trainid or labelid")
    if requested in ("trainid", "labelid") and kinds != {"gray"}:
        rgb = [p.pred for p in pairs if p.kind == "color"]
        raise DataError(f"--encoding {requested} expects single-channel PNGs; {len(rgb)} are RGB: "
                        + listing(rgb) + "; pass --encoding color for palette colours")
    column_map(requested, kind)  # rejects unknown names
    return requested


def _value_problem(p: PairCounts, encoding: str, cols: np.ndarray) -> str | None:
    present = p.counts.sum(0)  # type: ignore[union-attr]
    bad = [int(v) for v in np.nonzero(present * (cols < 0))[0]]
    if not bad:
        return None
    if encoding == "color":
        return f"{shown(p.pred)} (colour {p.bad_colour} is not one of the 19 classes or black)"
    return (f"{shown(p.pred)} (values {', '.join(map(str, bad[:5]))}"
            f"{', ...' if len(bad) > 5 else ''})")


def _raise_values(bad: list[str], encoding: str, kind: str | DatasetSpec) -> None:
    spec = get_dataset(kind)
    what = {"trainid": "trainIds 0..18 (and 255 = no class)",
            "labelid": f"labelIds 0..{spec.max_label_value} of {spec.title} (and 255 = no class)",
            "color": "the official colours of the 19 classes (and black = no class)"}[encoding]
    raise DataError(f"{len(bad)} predictions hold values outside {what} (encoding {encoding}): "
                    + listing(bad))


@dataclass
class ScoreResult:
    """The set's matrix (20x20: 19 classes + the void column), per-image matrices and the score."""

    encoding: str
    ids: list[str]
    pred_files: list[Path]
    gt_files: list[Path]
    per_image: list[np.ndarray]
    matrix: np.ndarray
    size: tuple[int, int] | None  # (H, W) of the ground truth when all agree
    score: Score = field(init=False)
    subsets: tuple[str, ...] = ("19", "16", "13")
    convention: str = "A"

    def __post_init__(self) -> None:
        self.score = score_with_void(self.matrix, self.subsets, self.convention)

    def per_image_frame(self):
        """pandas DataFrame, one row per image: pixels, accuracy, subset mIoUs, class IoUs (%)."""
        import pandas as pd

        rows = []
        for i, pred, m in zip(self.ids, self.pred_files, self.per_image):
            s = score_with_void(m, self.subsets, self.convention)
            rows.append({"image": i, "prediction": str(pred),
                         "pixels": s.pixels, "pixel_accuracy": s.pixel_accuracy * 100,
                         **{f"mIoU{k}": v * 100 for k, v in s.miou.items()},
                         **{n: v * 100 for n, v in s.iou.items()}})
        return pd.DataFrame(rows)


def score_with_void(matrix: np.ndarray, subsets: tuple[str, ...] = ("19", "16", "13"),
                    convention: str = "A") -> Score:
    """Score a 20x20 matrix whose last column counts void predictions (false negatives only).

    Equal to ``metrics.score_matrix(matrix[:19, :19])`` when the void column is empty.
    """
    m = np.asarray(matrix, dtype=np.int64)
    if m.shape != (NUM_CLASSES + 1, NUM_CLASSES + 1):
        raise ValueError(f"expected a {NUM_CLASSES + 1}x{NUM_CLASSES + 1} matrix, got {m.shape}")
    iou_a = iou_from_matrix(m)[:NUM_CLASSES]  # row 19 is empty: unions are those of the 19 classes
    iou_c = iou_from_matrix(apply_convention(m, convention))[:NUM_CLASSES]
    miou = {s: nanmean((iou_a if s == "19" else iou_c)[list(SUBSETS[s])]) for s in subsets}
    total = int(m.sum())
    return Score(iou={n: float(v) for n, v in zip(CLASS_NAMES, iou_a)}, miou=miou,
                 pixel_accuracy=float(np.trace(m) / total) if total else float("nan"),
                 convention=convention, pixels=total)


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def score_predictions(pred_dir: Path, gt: dict[str, Path] | Path, encoding: str = "auto",
                      subsets: tuple[str, ...] = ("19", "16", "13"), convention: str = "A",
                      workers: int | None = None,
                      progress: Callable[[int], None] | None = None,
                      kind: str | DatasetSpec = DEFAULT_TARGET) -> ScoreResult:
    """Match, decode (in ``workers`` threads) and score; ``progress(n)`` is called per image.

    ``gt`` is an id -> label map or the root of the target dataset ``kind`` (its val split is
    used). Every prediction must have its ground truth's size.
    """
    if encoding != "auto":
        column_map(encoding, kind)
    gt_map = gt if isinstance(gt, dict) else find_ground_truth(Path(gt), "val", kind)
    preds = match_predictions(Path(pred_dir), gt_map)
    stems = list(gt_map)

    def job(stem: str) -> PairCounts:
        result = count_pair(stem, preds[stem], gt_map[stem], kind)
        if progress is not None:
            progress(1)
        return result

    n = workers or default_workers()
    with torch_threads(1):  # the pool gives the parallelism
        if n == 1:
            pairs = [job(s) for s in stems]
        else:
            with ThreadPoolExecutor(n) as pool:
                pairs = list(pool.map(job, stems))
    _raise_file_problems(pairs)
    enc = resolve_encoding(pairs, encoding, kind)
    cols = column_map(enc, kind)
    bad = [msg for p in pairs if (msg := _value_problem(p, enc, cols))]
    if bad:
        _raise_values(bad, enc, kind)
    onehot = np.zeros((256, NUM_CLASSES + 1), dtype=np.int64)
    onehot[np.nonzero(cols >= 0)[0], cols[cols >= 0]] = 1
    per_image = []
    for p in pairs:
        m = np.zeros((NUM_CLASSES + 1, NUM_CLASSES + 1), dtype=np.int64)
        m[:NUM_CLASSES] = p.counts[:NUM_CLASSES] @ onehot  # type: ignore[index]  # row 19: ignored gt
        per_image.append(m)
    sizes = {p.size for p in pairs}
    return ScoreResult(enc, stems, [preds[s] for s in stems], [gt_map[s] for s in stems], per_image,
                       np.sum(per_image, axis=0), sizes.pop() if len(sizes) == 1 else None,
                       subsets=subsets, convention=convention)


def _raise_file_problems(pairs: list[PairCounts]) -> None:
    groups: dict[str, list[str]] = {}
    for p in pairs:
        if p.problem:
            kind, _, detail = p.problem.partition(": ")
            groups.setdefault(kind, []).append(detail)
    if not groups:
        return
    titles = {"unreadable": "unreadable PNGs", "format": "PNGs in the wrong format",
              "size": "predictions whose size differs from the ground truth"}
    parts = [f"{len(v)} {titles[k]}: " + listing(v) for k, v in groups.items()]
    raise DataError("cannot score: " + "; ".join(parts))
