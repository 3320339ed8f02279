"""DAFormer's ImageNet feature distance on thing classes (Hoyer et al., CVPR 2022; lhoyer/DAFormer
``mmseg/models/uda/dacs.py calc_feat_dist`` and ``mmseg/utils/utils.py downscale_label_ratio``).

The student's deepest encoder features on the source batch are pulled towards those of a frozen
copy of the ImageNet-initialised encoder (eval mode), only on feature cells whose source label is
a thing class: the label is downscaled to the feature grid by average-pooling its one-hot map
(void as an extra class) over each cell; a cell keeps its majority class where that class covers
>= ``min_ratio`` of it, else it is ignored. Loss = mean over kept cells of the L2 norm of the
feature difference (weight 0.005 applied by the method).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = 255
# Cityscapes trainIds of DAFormer's thing classes: traffic light, traffic sign, person, rider,
# car, truck, bus, train, motorcycle, bicycle (imnet_feature_dist_classes).
THING_CLASSES = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


def downscale_label_ratio(label: torch.Tensor, size: tuple[int, int], min_ratio: float,
                          num_classes: int) -> torch.Tensor:
    """[B, H, W] labels -> [B, h, w]: each cell's majority class where it covers >= ``min_ratio``
    of the cell, else 255 (also where void is the majority). The official code pools with a square
    kernel of H // h; when the feature grid does not divide the label (e.g. DeepLabV2's ceil-mode
    65x65 for 512x512) the cells are adaptive-pooling cells instead."""
    lab = label.long().clone()
    lab[(lab == IGNORE) | (lab >= num_classes)] = num_classes  # void as one more class
    onehot = F.one_hot(lab, num_classes + 1).permute(0, 3, 1, 2).float()
    (hh, ww), (h, w) = label.shape[-2:], size
    if hh % h == 0 and ww % w == 0 and hh // h == ww // w:
        pooled = F.avg_pool2d(onehot, kernel_size=hh // h)
    else:
        pooled = F.adaptive_avg_pool2d(onehot, (h, w))
    ratio, out = pooled.max(1)
    out[out == num_classes] = IGNORE
    out[ratio < min_ratio] = IGNORE
    return out


def thing_feature_distance(feat: torch.Tensor, feat_ref: torch.Tensor, label: torch.Tensor,
                           classes: tuple[int, ...], min_ratio: float, num_classes: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean L2 distance over the kept cells, bool mask [B, h, w] of those cells). No kept cell:
    0 with the graph kept (the official code's empty mean is NaN; its gradient is 0 either way)."""
    cells = downscale_label_ratio(label, tuple(feat.shape[-2:]), min_ratio, num_classes)
    mask = torch.isin(cells, torch.tensor(classes, device=cells.device))
    dist = torch.norm(feat.float() - feat_ref.float(), p=2, dim=1)
    if not bool(mask.any()):
        return dist.sum() * 0.0, mask
    return dist[mask].mean(), mask


class FrozenEncoder(nn.Module):
    """A frozen copy of a segmenter's input normalisation + backbone, always in eval mode;
    ``forward`` maps float [0, 1] images to the deepest backbone features."""

    def __init__(self, segmenter: nn.Module):
        super().__init__()
        self.normalize = copy.deepcopy(segmenter.normalize)
        self.backbone = copy.deepcopy(segmenter.backbone)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenEncoder:
        return super().train(False)  # never leaves eval mode (the official imnet_model.eval())

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(images))[-1]
