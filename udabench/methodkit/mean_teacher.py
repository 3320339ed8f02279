"""The mean-teacher pieces of DACS-style self-training: how the EMA teacher runs and updates, its
pseudo-labels and their weights, and the pixel-weighted CE of the published code.

DACS (``trainUDA.py``) and DAFormer (``mmseg/models/uda/dacs.py``) average only the teacher's
*parameters* (``ema_update_parameters``) and run the teacher in train mode: BatchNorm normalises
with the target batch's own statistics, and DAFormer switches dropout and drop-path off
(``set_teacher_mode``). The pseudo-label weight is one number per batch: the share of pixels whose
teacher confidence is >= the threshold (``>=``: ``ge(0.968)``), given to every pseudo-labelled
pixel; pasted source pixels weigh 1. Both codes average the weighted CE over *all* pixels, ignored
ones counting as 0 (``weighted_ce``).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = 255


@torch.no_grad()
def ema_update_parameters(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """teacher <- alpha teacher + (1 - alpha) student, parameters only (buffers untouched)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)


def _is_drop(module: nn.Module) -> bool:
    # timm's DropPath (and any stochastic-depth layer named so) and torch's dropout layers
    return isinstance(module, nn.modules.dropout._DropoutNd) or type(module).__name__ == "DropPath"


def set_teacher_mode(teacher: nn.Module, mode: Literal["train", "eval"]) -> None:
    """``train``: train mode (BatchNorm on batch statistics) with dropout and drop-path off, as
    DACS and DAFormer run their teachers; ``eval``: plain eval mode (running statistics)."""
    if mode == "eval":
        teacher.eval()
        return
    teacher.train()
    for m in teacher.modules():
        if _is_drop(m):
            m.eval()


def confident_fraction(probs: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(arg-max labels uint8 [B, H, W], share of the batch's pixels with max prob >= threshold)."""
    conf, label = probs.max(1)
    return label.to(torch.uint8), conf.ge(threshold).float().mean()


def border_rows(rows_at_reference: int, height: int, reference_height: int) -> int:
    """A row count published for ``reference_height``-pixel crops, at another height (rounded)."""
    if rows_at_reference <= 0:
        return 0
    return min(height, round(rows_at_reference * height / reference_height))


def pseudo_weight_map(fraction: torch.Tensor, shape: tuple[int, int, int], top: int = 0,
                      bottom: int = 0) -> torch.Tensor:
    """[B, H, W] float: ``fraction`` everywhere, 0 on the ``top`` and ``bottom`` rows (DAFormer's
    pseudo_weight_ignore_top/bottom: rectification artefacts and the ego vehicle)."""
    weight = fraction.to(torch.float32).expand(shape).clone()
    if top > 0:
        weight[:, :top, :] = 0
    if bottom > 0:
        weight[:, -bottom:, :] = 0
    return weight


def _logits_at(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits.float()


def weighted_ce(logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None = None
                ) -> torch.Tensor:
    """mean over ALL pixels of CE x weight, 255 contributing 0 (DACS's
    CrossEntropyLoss2dPixelWiseWeighted, mmseg 0.x's weighted cross_entropy); logits upsampled
    (bilinear) to the label size. ``weight`` None = 1 (mmseg's source CE)."""
    logits = _logits_at(logits, tuple(label.shape[-2:]))
    ce = F.cross_entropy(logits, label.long(), ignore_index=IGNORE, reduction="none")
    if weight is not None:
        ce = ce * weight
    return ce.mean()


@torch.no_grad()
def teacher_pseudo_labels(forward, teacher: nn.Module, images: torch.Tensor, threshold: float,
                          mode: Literal["train", "eval"] = "train"
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels uint8 [B, H, W], confident share): the teacher's softmax of its logits upsampled
    (bilinear) to the image size, arg-max, and the share of pixels with max prob >= threshold.
    ``forward(images, network)`` is the method's ``segment``."""
    set_teacher_mode(teacher, mode)
    logits = forward(images, teacher)["out"]
    probs = _logits_at(logits, tuple(images.shape[-2:])).softmax(1)
    return confident_fraction(probs, threshold)
