"""The DeepLabV2 classifier ("ASPP"), registered as head ``aspp``.

A head factory has the signature ``factory(levels, num_classes, cfg) -> nn.Module`` (see
udabench/models/contract.py); the module maps the list of feature maps it is given, shallow to
deep, to logits.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from udabench.models.contract import FeatureLevel
from udabench.registry import register_head

ASPP_DILATIONS = (6, 12, 18, 24)


class ASPPClassifier(nn.Module):
    """DeepLabV2's classifier: parallel dilated 3x3 convs to the classes, summed (no BN/ReLU).
    Reads the deepest map it is given (or a single tensor); logits at that map's resolution."""

    def __init__(self, in_channels: int, num_classes: int, branches: int = 4):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True)
            for d in ASPP_DILATIONS[:branches]
        )
        for conv in self.convs:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = x[-1]
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out

    def describe(self) -> dict:
        return {"aspp_branches": len(self.convs)}


@register_head("aspp", "DeepLabV2 classifier: dilated 3x3 convs (6, 12, 18, 24) summed, on the deepest map")
def aspp_head(levels: tuple[FeatureLevel, ...], num_classes: int, cfg) -> ASPPClassifier:
    return ASPPClassifier(levels[-1].channels, num_classes, cfg.aspp_branches)
