"""Per-image confusion matrices of a run (``per_image.npz``) and IoUs from matrices, in numpy.

The same arithmetic as ``udabench.metrics.score_matrix`` (NaN where a class has zero union;
convention B ignores ground-truth terrain/truck/train for the 16/13-class means) without torch,
so that reading results never imports it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from udabench.errors import DataError
from udabench.taxonomy import CLASS_NAMES, CONVENTION_B_IGNORED


def class_iou(mats: np.ndarray, convention: str = "A") -> np.ndarray:
    """IoU in [0, 1] per class of each matrix in ``mats`` [..., C, C] under a 16-class convention
    (B zeroes the ground-truth rows of terrain/truck/train); NaN where the union is zero."""
    m = np.asarray(mats, dtype=np.float64)
    if convention == "B":
        m = m.copy()
        m[..., list(CONVENTION_B_IGNORED), :] = 0
    tp = np.diagonal(m, axis1=-2, axis2=-1)
    union = m.sum(-1) + m.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def load_per_image(run_dir: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """(ids sorted, matrices [N, C, C] in that order) of one run directory."""
    path = Path(run_dir) / "per_image.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, mats = np.asarray(data["ids"]).astype(str), np.asarray(data["matrices"])
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; compare needs the per-image matrices `udabench run` writes") from None
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{path} is not a per-image matrix file with 'ids' and 'matrices' ({exc})") from None
    if mats.ndim != 3 or len(ids) != len(mats):
        raise DataError(f"{path}: expected ids [N] and matrices [N, C, C], got {ids.shape} and {mats.shape}")
    order = np.argsort(ids, kind="stable")
    return ids[order], mats[order]


def convention_ious(run_dir: Path | str, convention: str) -> dict[str, float] | None:
    """Per-class IoU (%) under ``convention`` recomputed from a run's per_image.npz, for records
    written before result.json carried ``iou_convention``; None when the matrices are not there
    or not 19-class."""
    try:
        _, mats = load_per_image(run_dir)
    except DataError:
        return None
    if mats.shape[-1] != len(CLASS_NAMES):
        return None
    iou = class_iou(mats.sum(0), convention) * 100
    return {name: float(v) for name, v in zip(CLASS_NAMES, iou)}


def headline_ious(record: dict[str, Any]) -> dict[str, float] | None:
    """The per-class IoUs (%) that the record's headline mIoU averages: ``iou`` for the 19-class
    headline and under convention A; ``iou_convention`` for 16/13 under convention B (None when
    an old record has neither it nor its matrices: its classes cannot be shown honestly)."""
    subsets = [str(s) for s in record.get("subsets") or ["19"]]
    headline = str(record.get("headline") or subsets[0])
    if headline == "19" or str(record.get("convention", "A")) != "B":
        return record["iou"]
    values = record.get("iou_convention")
    return values if isinstance(values, dict) else None
