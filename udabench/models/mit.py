"""Mix Transformer (MiT), the SegFormer encoder (Xie et al., NeurIPS 2021), from timm's layers.

timm has no MiT, so it is built here after the official code (NVlabs/SegFormer and its copy in
lhoyer/DAFormer, ``mmseg/models/backbones/mix_transformer.py``): four stages, each an overlapping
patch embedding (a strided conv, kernel 7 stride 4 then kernel 3 stride 2, + LayerNorm), blocks of
efficient self-attention (keys and values from a map shrunk by a strided conv, ``sr_ratio``) and a
Mix-FFN (Linear -> 3x3 depthwise conv -> GELU -> Linear), then a LayerNorm. Outputs 4 maps at
strides 4, 8, 16, 32. Official weights load through :mod:`udabench.models.mit_weights`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

from udabench.errors import UserError
from udabench.models import mit_weights
from udabench.models.contract import Backbone, FeatureLevel
from udabench.registry import register_backbone

PATCH_SIZES = (7, 3, 3, 3)
STRIDES = (4, 2, 2, 2)
BLOCK_NORM_EPS = 1e-6  # the variants' norm_layer; patch-embed and reduction norms keep 1e-5


@dataclass(frozen=True)
class MiTSpec:
    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1


# The official variants (SegFormer's mit_b0..mit_b5: qkv_bias, mlp ratio 4, drop path 0.1).
_WIDE = (64, 128, 320, 512)
VARIANTS: dict[str, MiTSpec] = {
    "mit_b0": MiTSpec((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MiTSpec(_WIDE, (2, 2, 2, 2)),
    "mit_b2": MiTSpec(_WIDE, (3, 4, 6, 3)),
    "mit_b3": MiTSpec(_WIDE, (3, 4, 18, 3)),
    "mit_b4": MiTSpec(_WIDE, (3, 8, 27, 3)),
    "mit_b5": MiTSpec(_WIDE, (3, 6, 40, 3)),
    # udabench's MiniCity variant: one block per stage, half of B0's widths, one head per 16-32
    # channels; a MiniCity step costs about what resnet-tiny's does (bench/bench_models.py).
    "mit-tiny": MiTSpec((16, 32, 80, 128), (1, 1, 1, 1), num_heads=(1, 1, 2, 4)),
}


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows (padding k // 2), then LayerNorm over channels."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from the map reduced ``sr_ratio`` times per
    side (conv with kernel = stride = sr_ratio, then LayerNorm): cost N * N / sr_ratio^2."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MiT: {dim} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=True)
        self.kv = nn.Linear(dim, dim * 2, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            x = self.norm(x)
        kv = self.kv(x).reshape(b, -1, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        # softmax(q k^T / sqrt(d)) v, the official formula, through the fused kernel.
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv (the positional information) -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, bias=True, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(self.act(x))


class MiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MiTStage(nn.Module):
    def __init__(self, in_chans: int, dim: int, index: int, spec: MiTSpec, drop_paths: list[float]):
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_chans, dim, PATCH_SIZES[index], STRIDES[index])
        self.blocks = nn.ModuleList(
            MiTBlock(dim, spec.num_heads[index], spec.mlp_ratio, spec.sr_ratios[index], dp)
            for dp in drop_paths)
        self.norm = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, h, w)
        return self.norm(x).reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()


class MixVisionTransformer(nn.Module):
    """The four MiT stages; ``forward`` returns their outputs (NCHW, strides 4, 8, 16, 32)."""

    def __init__(self, spec: MiTSpec):
        super().__init__()
        self.spec = spec
        # Stochastic depth rises linearly over all blocks, as in the official code.
        rates = torch.linspace(0, spec.drop_path_rate, sum(spec.depths), device="cpu").tolist()
        starts = [sum(spec.depths[:i]) for i in range(4)]
        dims = (3, *spec.embed_dims)
        self.stages = nn.ModuleList(
            MiTStage(dims[i], dims[i + 1], i, spec, rates[starts[i]:starts[i] + spec.depths[i]])
            for i in range(4))
        if self.stages[0].patch_embed.proj.weight.device.type != "meta":  # shapes only: skip
            self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


def _init_weights(m: nn.Module) -> None:
    """The official initialisation (used when training from scratch)."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class MiTBackbone(Backbone):
    """MiT as a udabench backbone: 4 levels (strides 4-32), the aux head on stage 3, ImageNet
    normalisation (SegFormer's mean/std), LayerNorm only (``bn_mode`` has nothing to act on)."""

    def __init__(self, arch: str, spec: MiTSpec):
        super().__init__()
        self.arch = arch
        self.body = MixVisionTransformer(spec)
        self.levels = tuple(FeatureLevel(f"stage{i + 1}", c, 4 * 2 ** i)
                            for i, c in enumerate(spec.embed_dims))
        self.aux_level = 2
        self.geometry = "segformer"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)

    def init_state_dict(self, sd: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
        return mit_weights.to_udabench(sd, notes)


def mit_backbone(arch: str, pretrained: str | None = None) -> MiTBackbone:
    if pretrained is not None:
        official = "" if arch == "mit-tiny" else (
            f"; the official {arch}.pth (SegFormer's ImageNet-1k weights, linked from the "
            f"NVlabs/SegFormer README) loads as model.init = '/path/to/{arch}.pth'")
        raise UserError(f"model.init: {arch} has no weights on the timm hub; use model.init = "
                        f"'scratch' or a local weights file{official}")
    return MiTBackbone(arch, VARIANTS[arch])


def _register(arch: str, description: str) -> None:
    register_backbone(arch, description)(lambda pretrained=None: mit_backbone(arch, pretrained))


for _arch, _spec in VARIANTS.items():
    _register(_arch, f"MiT ({'SegFormer ' if _arch != 'mit-tiny' else 'udabench MiniCity '}"
                     f"variant), widths {'-'.join(map(str, _spec.embed_dims))}, "
                     f"depths {'-'.join(map(str, _spec.depths))}, strides 4-32")
