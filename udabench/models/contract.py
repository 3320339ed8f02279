"""What a backbone and a head must provide to the segmenter (docs/models.md says it in prose).

Backbone: an ``nn.Module`` subclassing :class:`Backbone`, built by a factory registered with
``@register_backbone(name)`` whose signature is ``factory(pretrained: str | None) -> Backbone``
(``pretrained``: None = random init, a timm tag, or :data:`DEFAULT_WEIGHTS`).

Head: a factory registered with ``@register_head(name)``:
``factory(levels: tuple[FeatureLevel, ...], num_classes: int, cfg: SegmenterConfig) -> nn.Module``
whose module maps the list of feature maps it is given (shallow to deep) to logits.

:func:`check_backbone` and :func:`check_head` verify a module against its declaration with a
shape-only forward on the meta device (no memory, no compute); the contract tests run them over
every registered backbone and head.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import torch
from torch import nn
from torch.func import functional_call

from udabench.models import weights
from udabench.models.normalisation import NORMALISATIONS

#: ``pretrained`` value asking a factory for the ImageNet weights its backbone usually starts from
#: (what ``model.init = "imagenet"`` means: ``tv_in1k`` for the ResNets, timm's default otherwise).
DEFAULT_WEIGHTS = "default"


@dataclass(frozen=True)
class FeatureLevel:
    """One feature map a backbone returns: its channels and its nominal reduction (input size /
    map size; the actual size rounds, e.g. the Caffe ResNet gives 65x129 for 512x1024 at 8)."""

    name: str
    channels: int
    reduction: int


class Backbone(nn.Module):
    """Base class of every backbone. A subclass sets, in ``__init__``:

    - ``levels``: the :class:`FeatureLevel` of each map ``forward`` returns, shallow to deep. The
      main head reads the deepest; ``feat`` (what feature-aligning methods use) is the deepest.
    - ``aux_level``: index into ``levels`` of the map the auxiliary head (``multi_level``) reads.
    - ``body``: the module whose state dict weights files describe (``model.init = <file>``).
    - ``normalisation``: key of ``udabench.models.normalisation.NORMALISATIONS`` its weights expect.
    - ``pretrained``: the timm tag the weights came from, or None; ``geometry``: a short label.

    and implements ``forward(normalised images [B, 3, H, W]) -> list of [B, C_i, H_i, W_i]`` (NCHW,
    one per level). ``init_state_dict`` maps a weights file's tensors onto ``body``'s keys; the
    default takes the ``backbone.*`` part of a whole-model file and drops an ``fc.*`` classifier.
    """

    levels: tuple[FeatureLevel, ...] = ()
    aux_level: int = -2
    normalisation: str = "imagenet"
    pretrained: str | None = None
    geometry: str = "standard"
    body: nn.Module

    @property
    def channels(self) -> tuple[int, int]:
        """(aux level channels, deepest level channels)."""
        return int(self.levels[self.aux_level].channels), int(self.levels[-1].channels)

    @property
    def output_stride(self) -> int:
        return int(self.levels[-1].reduction)

    def init_state_dict(self, sd: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
        return weights.backbone_keys(sd, notes)


def meta_forward(module: nn.Module, *inputs: object) -> object:
    """``module(*inputs)`` on the meta device: shapes only, nothing allocated or computed."""
    tensors = chain(module.named_parameters(), module.named_buffers())
    meta = {n: torch.empty_like(t, device="meta") for n, t in tensors}
    with torch.no_grad():
        return functional_call(module, meta, inputs)


def check_backbone(backbone: nn.Module, size: tuple[int, int] = (128, 256)) -> list[str]:
    """What breaks the backbone contract (empty when nothing does), by a meta forward at ``size``."""
    problems: list[str] = []
    if not isinstance(backbone, Backbone):
        return [f"{type(backbone).__name__} does not subclass udabench.models.Backbone"]
    levels = tuple(backbone.levels)
    if not levels or not all(isinstance(lv, FeatureLevel) for lv in levels):
        return ["levels must be a non-empty tuple of FeatureLevel"]
    if not -len(levels) <= backbone.aux_level < len(levels):
        problems.append(f"aux_level {backbone.aux_level} is outside the {len(levels)} levels")
    reductions = [lv.reduction for lv in levels]
    if reductions != sorted(reductions):
        problems.append(f"levels must go shallow to deep (reductions {reductions})")
    if backbone.normalisation not in NORMALISATIONS:
        problems.append(f"normalisation '{backbone.normalisation}' is not one of {list(NORMALISATIONS)}")
    if not isinstance(getattr(backbone, "body", None), nn.Module):
        problems.append("body (the module weights files describe) is missing")
    outs = meta_forward(backbone, torch.empty(2, 3, *size, device="meta"))
    if not isinstance(outs, (list, tuple)) or len(outs) != len(levels):
        n = len(outs) if isinstance(outs, (list, tuple)) else type(outs).__name__
        return problems + [f"forward returned {n} maps for {len(levels)} declared levels"]
    for lv, out in zip(levels, outs):
        if out.dim() != 4 or out.shape[0] != 2 or out.shape[1] != lv.channels:
            problems.append(f"level {lv.name}: expected [2, {lv.channels}, h, w], got {list(out.shape)}")
            continue
        for dim, (n_in, n_out) in enumerate(zip(size, out.shape[-2:])):
            if abs(n_in / lv.reduction - n_out) > 1:  # floor or ceil of the nominal size
                problems.append(f"level {lv.name}: {n_in}/{lv.reduction} -> {n_out} along dim {dim}")
    return problems


def check_head(head: nn.Module, levels: tuple[FeatureLevel, ...], num_classes: int,
               size: tuple[int, int] = (128, 256)) -> tuple[list[str], int]:
    """Problems of a head given maps shaped as ``levels`` describe at input ``size``, and the
    reduction its logits come out at (input height / logits height)."""
    feats = [torch.empty(2, lv.channels, size[0] // lv.reduction, size[1] // lv.reduction,
                         device="meta") for lv in levels]
    out = meta_forward(head, feats)
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        return [f"forward must return a [B, classes, h, w] tensor, got {type(out).__name__}"], 0
    problems = []
    if tuple(out.shape[:2]) != (2, num_classes):
        problems.append(f"expected [2, {num_classes}, h, w] logits, got {list(out.shape)}")
    return problems, size[0] // int(out.shape[-2])
