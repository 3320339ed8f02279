"""Exact mIoU scoring (docs/protocol.md section 5): one streaming 19x19 confusion matrix.

Rows are ground truth, columns are predictions; ground-truth 255 is ignored. IoU of a class with
zero union is NaN and left out of every mean. mIoU19/16/13 all come from the same matrix; the two
16-class conventions are both derived from it (B zeroes the rows of terrain/truck/train).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from udabench.errors import UserError
from udabench.taxonomy import CLASS_NAMES, CONVENTION_B_IGNORED, IGNORE, NUM_CLASSES, SUBSETS

CONVENTIONS = ("A", "B")


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def confusion_matrix(
    pred: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    num_classes: int = NUM_CLASSES,
    name: str = "prediction",
) -> torch.Tensor:
    """The (num_classes x num_classes) int64 confusion matrix of one prediction/label pair.

    One bincount over a fused index ``label * C + pred`` without boolean masking: ignored pixels
    (label 255) land in bins past C*C, which are dropped, and any bin between C*C and the ignore
    block flags a label value outside 0..C-1/255.
    """
    pred, label = _as_tensor(pred), _as_tensor(label)
    if pred.shape != label.shape:
        raise UserError(
            f"{name}: prediction size {tuple(pred.shape)} differs from label size {tuple(label.shape)}"
        )
    if pred.numel() == 0:
        return torch.zeros(num_classes, num_classes, dtype=torch.int64, device=pred.device)
    if pred.dtype.is_floating_point or label.dtype.is_floating_point:
        raise TypeError("confusion_matrix takes integer class maps, not logits or probabilities")
    pmin, pmax = torch.aminmax(pred)
    if int(pmin) < 0 or int(pmax) >= num_classes:
        bad = int(pmax) if int(pmax) >= num_classes else int(pmin)
        raise UserError(f"{name}: predicted class {bad} is outside 0..{num_classes - 1}")
    if label.dtype != torch.uint8 and int(label.min()) < 0:
        raise UserError(f"{name}: negative label value {int(label.min())}")
    # int16 holds every fused index (255 * C + C - 1 < 32768 for C <= 128) and quarters the
    # memory traffic of int64; bincount widens internally.
    if num_classes > 128:
        raise ValueError("confusion_matrix supports at most 128 classes")
    idx = (label.reshape(-1).to(torch.int16) * num_classes).add_(pred.reshape(-1).to(torch.int16))
    counts = torch.bincount(idx, minlength=(IGNORE + 1) * num_classes)
    ignore_start = IGNORE * num_classes
    if int(counts[num_classes * num_classes : ignore_start].sum()) != 0:
        bad_bins = torch.nonzero(counts[num_classes * num_classes : ignore_start]).flatten()
        bad = int(bad_bins[0]) // num_classes + num_classes
        raise UserError(f"{name}: label value {bad} is outside 0..{num_classes - 1} and {IGNORE}")
    return counts[: num_classes * num_classes].reshape(num_classes, num_classes).to(torch.int64)


def iou_from_matrix(matrix: torch.Tensor | np.ndarray) -> np.ndarray:
    """IoU per class; NaN where the class has zero union (absent from both)."""
    m = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.float64)
    tp = np.diag(m)
    union = m.sum(0) + m.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def apply_convention(matrix: np.ndarray, convention: str) -> np.ndarray:
    """Convention A keeps the matrix; B ignores ground-truth terrain/truck/train (zeroes rows)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown 16-class convention '{convention}'; known: A, B")
    m = np.array(matrix, dtype=np.int64, copy=True)
    if convention == "B":
        m[list(CONVENTION_B_IGNORED), :] = 0
    return m


def nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


@dataclass
class Score:
    """Per-class IoU and subset mIoUs from one confusion matrix, with the protocol that made them."""

    iou: dict[str, float]  # class name -> IoU in [0, 1] (NaN for zero union)
    miou: dict[str, float]  # subset ('19', '16', '13') -> mIoU in [0, 1]
    pixel_accuracy: float
    convention: str
    pixels: int
    # Per-class IoU from the matrix of the 16-class convention: what mIoU16/mIoU13 average
    # (equal to ``iou`` under convention A; under B the ignored classes' rows are dropped).
    iou_convention: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "iou": self.iou,
            "iou_convention": self.iou_convention,
            "miou": self.miou,
            "pixel_accuracy": self.pixel_accuracy,
            "convention": self.convention,
            "pixels": self.pixels,
        }


def score_matrix(
    matrix: torch.Tensor | np.ndarray,
    subsets: tuple[str, ...] = ("19", "16", "13"),
    convention: str = "A",
) -> Score:
    """Score a 19x19 matrix over the named subsets.

    The 19-class mIoU is always from the untouched matrix; the 16- and 13-class means use the
    matrix of the chosen convention (identical to A for 19).
    """
    base = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.int64)
    iou_a = iou_from_matrix(base)
    iou_c = iou_from_matrix(apply_convention(base, convention))
    miou = {}
    for s in subsets:
        ious = iou_a if s == "19" else iou_c
        miou[s] = nanmean(ious[list(SUBSETS[s])])
    total = int(base.sum())
    return Score(
        iou={n: float(v) for n, v in zip(CLASS_NAMES, iou_a)},
        miou=miou,
        pixel_accuracy=float(np.trace(base) / total) if total else math.nan,
        convention=convention,
        pixels=total,
        iou_convention={n: float(v) for n, v in zip(CLASS_NAMES, iou_c)},
    )


@dataclass
class ConfusionMeter:
    """Streaming confusion matrix on CPU or CUDA, with optional per-image matrices and DDP reduction."""

    num_classes: int = NUM_CLASSES
    device: torch.device | str = "cpu"
    keep_per_image: bool = False
    matrix: torch.Tensor = field(init=False)
    per_image: list[np.ndarray] = field(init=False, default_factory=list)
    image_ids: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.matrix = torch.zeros(
            self.num_classes, self.num_classes, dtype=torch.int64, device=self.device
        )

    def update(
        self,
        pred: torch.Tensor | np.ndarray,
        label: torch.Tensor | np.ndarray,
        image_id: str | None = None,
    ) -> torch.Tensor:
        """Add one image (or a batch when ``keep_per_image`` is off); returns its matrix."""
        name = image_id or "prediction"
        m = confusion_matrix(pred, label, self.num_classes, name=name)
        self.matrix += m.to(self.matrix.device)
        if self.keep_per_image:
            self.per_image.append(m.cpu().numpy())
            self.image_ids.append(image_id or str(len(self.image_ids)))
        return m

    def all_reduce(self) -> None:
        """Sum the matrix across DDP ranks (no-op when not distributed)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix)

    def score(self, subsets: tuple[str, ...] = ("19", "16", "13"), convention: str = "A") -> Score:
        return score_matrix(self.matrix, subsets, convention)
