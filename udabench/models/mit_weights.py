"""Key mapping between the official MiT weights files and udabench's MiT (``backbone.body``).

The official SegFormer ImageNet-1k files (``mit_b0.pth`` .. ``mit_b5.pth``, also what DAFormer
loads as ``pretrained/mit_b5.pth``) name the stages by suffix; udabench groups them in ``stages``:

    official                                  udabench (MixVisionTransformer)
    patch_embed{s}.proj.{weight,bias}         stages.{s-1}.patch_embed.proj.{weight,bias}
    patch_embed{s}.norm.{weight,bias}         stages.{s-1}.patch_embed.norm.{weight,bias}
    block{s}.{j}.norm1|norm2.*                stages.{s-1}.blocks.{j}.norm1|norm2.*
    block{s}.{j}.attn.q|kv|proj|sr|norm.*     stages.{s-1}.blocks.{j}.attn.q|kv|proj|sr|norm.*
    block{s}.{j}.mlp.fc1|fc2.*                stages.{s-1}.blocks.{j}.mlp.fc1|fc2.*
    block{s}.{j}.mlp.dwconv.dwconv.*          stages.{s-1}.blocks.{j}.mlp.dwconv.*
    norm{s}.{weight,bias}                     stages.{s-1}.norm.{weight,bias}
    head.{weight,bias}                        (the ImageNet classifier: not loaded, noted)

with s = 1..4 (``attn.sr``/``attn.norm`` exist where the stage's sr_ratio > 1: stages 1-3).
Whole segmentation checkpoints (mmseg SegFormer/DAFormer: ``backbone.*`` + ``decode_head.*``)
contribute their ``backbone.*`` part; files already in udabench's layout load unchanged.
"""
from __future__ import annotations

import re
from typing import Callable

import torch

from udabench.models import weights

_TO_UDABENCH: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"^patch_embed([1-4])\.(.+)$"),
     lambda m: f"stages.{int(m[1]) - 1}.patch_embed.{m[2]}"),
    (re.compile(r"^block([1-4])\.(\d+)\.(.+)$"),
     lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.{_ours_in_block(m[3])}"),
    (re.compile(r"^norm([1-4])\.(.+)$"), lambda m: f"stages.{int(m[1]) - 1}.norm.{m[2]}"),
]
_TO_OFFICIAL: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"^stages\.([0-3])\.patch_embed\.(.+)$"),
     lambda m: f"patch_embed{int(m[1]) + 1}.{m[2]}"),
    (re.compile(r"^stages\.([0-3])\.blocks\.(\d+)\.(.+)$"),
     lambda m: f"block{int(m[1]) + 1}.{m[2]}.{_official_in_block(m[3])}"),
    (re.compile(r"^stages\.([0-3])\.norm\.(.+)$"), lambda m: f"norm{int(m[1]) + 1}.{m[2]}"),
]


def _ours_in_block(rest: str) -> str:
    return "mlp.dwconv." + rest[len("mlp.dwconv.dwconv."):] if rest.startswith("mlp.dwconv.dwconv.") else rest


def _official_in_block(rest: str) -> str:
    return "mlp.dwconv.dwconv." + rest[len("mlp.dwconv."):] if rest.startswith("mlp.dwconv.") else rest


def _rename(key: str, rules: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]]) -> str:
    for pattern, new in rules:
        match = pattern.match(key)
        if match:
            return new(match)
    return key  # left for the strict loader to report as unexpected


def to_udabench(sd: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    """An official (or udabench-layout) MiT state dict -> udabench's MiT keys."""
    sd = weights.backbone_keys(sd, notes)
    if any(k.startswith("stages.") for k in sd):
        return sd
    classifier = [k for k in sd if k.startswith("head.")]
    if classifier:
        notes.append(f"ignored the ImageNet classifier ({', '.join(classifier)})")
    return {_rename(k, _TO_UDABENCH): v for k, v in sd.items() if not k.startswith("head.")}


def to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """udabench's MiT keys -> the official names (to export, and to test the mapping)."""
    return {_rename(k, _TO_OFFICIAL): v for k, v in sd.items()}

