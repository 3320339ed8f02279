"""Losses and prediction maps shared by methods (segmentation CE, entropy, upsampled softmax)."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

IGNORE = 255


def _to_label_size(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    if logits.shape[-2:] != label.shape[-2:]:
        logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def ce_sum(logits: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed CE, number of labelled pixels), logits upsampled to the label size, 255 ignored."""
    logits = _to_label_size(logits, label)
    label = label.long()
    total = F.cross_entropy(logits.float(), label, ignore_index=IGNORE, reduction="sum")
    return total, (label != IGNORE).sum()


def cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean segmentation CE over labelled pixels, logits upsampled to the label size, 255 ignored.

    A batch without a single labelled pixel (an all-void label, a pseudo-label map with nothing
    confident) gives 0 with the graph kept, not the NaN of an empty mean.
    """
    total, count = ce_sum(logits, label)
    return total / count.clamp_min(1)


def mixed_ce(method: Any, parts: list[tuple[torch.Tensor, torch.Tensor]], aux_weight: float
             ) -> tuple[torch.Tensor, dict]:
    """One CE over the labelled pixels of several sub-batches, as if they were one batch (e.g.
    CBST's batches mixing source images and pseudo-labelled target images of different sizes):
    each non-empty (images, labels) part is forwarded once; sums and pixel counts add up."""
    total = count = aux = None
    for images, label in parts:
        if images.shape[0] == 0:
            continue
        out = method.segment(images)
        s, n = ce_sum(out["out"], label)
        total, count = (s, n) if total is None else (total + s, count + n)
        if out.get("aux") is not None and aux_weight > 0:
            a = ce_sum(out["aux"], label)[0]
            aux = a if aux is None else aux + a
    if total is None:
        raise ValueError("mixed_ce needs at least one non-empty part")
    loss = total / count.clamp_min(1)
    logs = {"ce": float(loss.detach())}
    if aux is not None:
        loss = loss + aux_weight * aux / count.clamp_min(1)
    return loss, logs


def supervised_loss(method: Any, batch: dict, aux_weight: float) -> tuple[torch.Tensor, dict, dict]:
    """CE of the main head (+ ``aux_weight`` x the auxiliary head's) on a labelled batch.

    Returns (loss, logs, segmenter outputs) so methods can reuse the forward pass.
    """
    out = method.segment(batch["image"])
    loss = cross_entropy(out["out"], batch["label"])
    logs = {"ce": float(loss.detach())}
    if out.get("aux") is not None and aux_weight > 0:
        aux = cross_entropy(out["aux"], batch["label"])
        loss = loss + aux_weight * aux
        logs["ce_aux"] = float(aux.detach())
    return loss, logs, out


def multi_level_ce(out: dict, label: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """CE of the main head plus ``aux_weight`` x the auxiliary head's, when it has one."""
    loss = cross_entropy(out["out"], label)
    if out.get("aux") is not None and aux_weight > 0:
        loss = loss + aux_weight * cross_entropy(out["aux"], label)
    return loss


def upsampled_probs(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Softmax of the logits upsampled (bilinear) to ``size``, as the published code does."""
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits.float().softmax(1)


def self_information(probs: torch.Tensor) -> torch.Tensor:
    """AdvEnt's weighted self-information map I_c = -p_c log p_c / log C, [B, C, H, W]."""
    c = probs.shape[1]
    return -probs * torch.log(probs.clamp_min(1e-30)) / math.log(c)


def normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy divided by log C (in [0, 1]), [B, H, W]."""
    return self_information(probs).sum(1)
