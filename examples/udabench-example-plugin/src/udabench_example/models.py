"""A backbone and a head as a udabench plug-in registers them (a worked example,
docs/extending.md; the contracts are in udabench/models/contract.py and docs/models.md).

``example-plain-cnn``: three stride-2 stages of 3x3 conv, BatchNorm and ReLU (maps at 1/2, 1/4
and 1/8 of the input), trained from scratch. ``example-fpn-lite``: every map it is given projected
(1x1) to ``model.head_channels``, upsampled to the shallowest one, summed and classified (1x1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from udabench.errors import UserError
from udabench.models import Backbone, FeatureLevel
from udabench.registry import register_backbone, register_head


class PlainCNN(Backbone):
    """Stride-2 conv stages; returns every stage's map, shallow to deep."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        stages, channels = [], 3
        for width in widths:
            stages.append(nn.Sequential(nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False),
                                        nn.BatchNorm2d(width), nn.ReLU(inplace=True)))
            channels = width
        self.body = nn.ModuleList(stages)  # what a weights file (model.init = <file>) describes
        self.levels = tuple(FeatureLevel(f"stage{i + 1}", w, 2 ** (i + 1)) for i, w in enumerate(widths))
        self.aux_level = len(widths) - 2  # the auxiliary head (model.multi_level) reads stage 2
        self.normalisation = "imagenet"  # inputs are normalised with the ImageNet mean and std

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.body:
            x = stage(x)
            maps.append(x)
        return maps


@register_backbone("example-plain-cnn", "example plug-in: 3 stride-2 conv stages (1/2, 1/4, 1/8)")
def plain_cnn(pretrained: str | None = None) -> PlainCNN:
    if pretrained is not None:
        raise UserError("model.init: example-plain-cnn has no pretrained weights; use "
                        "model.init = 'scratch' or a local weights file")
    return PlainCNN()


class LiteFPN(nn.Module):
    """Projected, upsampled and summed levels, then a 1x1 classifier: logits at the shallowest
    level's resolution."""

    def __init__(self, levels: tuple[FeatureLevel, ...], num_classes: int, width: int):
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(lv.channels, width, 1) for lv in levels)
        self.classify = nn.Conv2d(width, num_classes, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        size = maps[0].shape[-2:]
        fused = sum(F.interpolate(project(m), size=size, mode="bilinear", align_corners=False)
                    for project, m in zip(self.project, maps))
        return self.classify(F.relu(fused))


@register_head("example-fpn-lite", "example plug-in: 1x1 projections summed at the finest level")
def fpn_lite(levels: tuple[FeatureLevel, ...], num_classes: int, cfg) -> LiteFPN:
    return LiteFPN(levels, num_classes, cfg.head_channels)
