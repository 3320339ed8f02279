"""DAFormer's context-aware fusion head (Hoyer et al., CVPR 2022), registered as head ``daformer``.

After lhoyer/DAFormer ``mmseg/models/decode_heads/daformer_head.py`` with the paper's config
(``configs/_base_/models/daformer_sepaspp_mitb5.py``):

1. each level i is embedded to ``channels`` (256) by a linear layer over channels (``MLP``: no norm,
   no activation), upsampled bilinearly (align_corners False) to the first (finest) level's size;
2. the concatenation (4 x 256) is fused by an ASPP without image pooling: a 1x1 ConvBNReLU branch
   (dilation 1) and depthwise-separable 3x3 branches with dilations 6, 12, 18 (depthwise
   ConvBNReLU then pointwise ConvBNReLU), concatenated and merged by a 3x3 ConvBNReLU bottleneck;
3. Dropout2d(0.1) and a 1x1 classifier.

Module names follow the official ones (``embed_layers.{i}.proj``, ``fuse_layer.aspp_modules.{k}``
with ``conv``/``bn`` or ``depthwise_conv``/``pointwise_conv``, ``fuse_layer.bottleneck``,
``conv_seg``), so a released DAFormer ``decode_head.*`` maps onto ``head.*`` by its prefix.
Output stride: that of the finest level (4 on MiT).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import nn

from udabench.models.contract import FeatureLevel
from udabench.registry import register_head

DILATIONS = (1, 6, 12, 18)
DROPOUT = 0.1


class MLP(nn.Module):
    """Linear embedding of every pixel's channels (a 1x1 conv written as the official Linear)."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(in_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DepthwiseSeparableConv(nn.Module):
    def __init__(self, in_channels: int, channels: int, dilation: int):
        super().__init__()
        self.depthwise_conv = ConvNormAct(in_channels, in_channels, 3, dilation=dilation,
                                          groups=in_channels)
        self.pointwise_conv = ConvNormAct(in_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class SeparableASPP(nn.Module):
    """ASPP (no image pooling) with depthwise-separable dilated branches, then a 3x3 bottleneck."""

    def __init__(self, in_channels: int, channels: int, dilations: Sequence[int] = DILATIONS):
        super().__init__()
        self.dilations = tuple(dilations)
        self.aspp_modules = nn.ModuleList(
            ConvNormAct(in_channels, channels, 1) if d == 1
            else DepthwiseSeparableConv(in_channels, channels, d)
            for d in self.dilations)
        self.bottleneck = ConvNormAct(len(self.dilations) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([branch(x) for branch in self.aspp_modules], dim=1))


class DAFormerHead(nn.Module):
    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 256,
                 dilations: Sequence[int] = DILATIONS, dropout: float = DROPOUT):
        super().__init__()
        self.channels = channels
        self.embed_layers = nn.ModuleDict(
            {str(i): MLP(c, channels) for i, c in enumerate(in_channels)})
        self.fuse_layer = SeparableASPP(len(in_channels) * channels, channels, dilations)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        # mmcv's ConvModule init (Kaiming normal, fan_out, ReLU; BN 1/0); the embeddings keep
        # PyTorch's Linear init; the classifier N(0, 0.01) as every mmseg decode head.
        for m in self.fuse_layer.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.embed_layers):
            raise ValueError(f"DAFormerHead expects {len(self.embed_layers)} maps, got {len(features)}")
        size = features[0].shape[-2:]
        embedded = []
        for i, x in enumerate(features):
            x = self.embed_layers[str(i)](x)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            embedded.append(x)
        return self.conv_seg(self.dropout(self.fuse_layer(torch.cat(embedded, dim=1))))

    def describe(self) -> dict:
        return {"head_channels": self.channels, "fusion_dilations": list(self.fuse_layer.dilations)}


@register_head("daformer", "DAFormer context-aware fusion: every level embedded, upsampled to the "
                           "finest, separable ASPP (1, 6, 12, 18); output stride of the finest level")
def daformer_head(levels: tuple[FeatureLevel, ...], num_classes: int, cfg) -> DAFormerHead:
    return DAFormerHead([lv.channels for lv in levels], num_classes, cfg.head_channels)
