"""timm backbones: dilated ResNets (output stride 8, DeepLabV2) and any timm ``features_only`` model.

Every factory is registered with ``@register_backbone`` and has the signature
``factory(pretrained: str | None = None) -> Backbone``: ``pretrained`` is None (timm's random
initialisation), a timm pretrained tag (e.g. ``"tv_in1k"``) fetched through the hub, or
``DEFAULT_WEIGHTS``. :func:`timm_features` serves a timm model name that is not registered.
"""
from __future__ import annotations

import os
import re
from typing import Any

import timm
import torch
from timm.layers import Format
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from udabench.errors import UserError
from udabench.models import weights
from udabench.models.contract import DEFAULT_WEIGHTS, Backbone, FeatureLevel
from udabench.models.normalisation import normalisation_named
from udabench.registry import register_backbone

OUTPUT_STRIDE = 8
# timm's ResNet feature_info: act1, layer1, layer2, layer3, layer4. act1 (stride 2) is left out.
OUT_INDICES = (1, 2, 3, 4)
# torchvision's original ImageNet weights, as used by DeepLabV2-era PyTorch code.
RESNET_IMAGENET_TAG = "tv_in1k"


def _levels(body: nn.Module) -> tuple[FeatureLevel, ...]:
    info = body.feature_info
    return tuple(FeatureLevel(str(n), int(c), int(r))
                 for n, c, r in zip(info.module_name(), info.channels(), info.reduction()))


class ResNetBackbone(Backbone):
    """A timm ResNet cut after layer4 (timm ``features_only``), layer3/4 dilated 2/4; returns
    layer1..layer4. The auxiliary head of the classic multi-level model reads layer3.

    ``body`` is timm's FeatureListNet, whose state-dict keys are the plain ResNet keys
    (``conv1.weight``, ``layer1.0.conv1.weight``, ...), the layout timm and torchvision share.
    """

    def __init__(self, body: nn.Module, arch: str, pretrained: str | None = None):
        super().__init__()
        self.body = body
        self.arch = arch
        self.pretrained = pretrained  # timm tag the weights came from, for provenance
        self.levels = _levels(body)
        self.aux_level = len(self.levels) - 2  # layer3
        self.geometry = "timm"  # "caffe" once apply_caffe_geometry() ran

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))

    @property
    def is_bottleneck(self) -> bool:
        return isinstance(self.body.layer1[0], Bottleneck)


def apply_caffe_geometry(backbone: ResNetBackbone) -> None:
    """Turn the timm network into the classic (Caffe) DeepLabV2 ResNet, in place.

    Three differences, none of which changes a parameter shape:
    1. Caffe bottlenecks stride in the first 1x1 conv; timm (like torchvision v1.5) in the 3x3.
       With output stride 8 only layer2.0 strides, so its stride moves from conv2 to conv1.
    2. The classic code dilates every block of layer3/layer4 (2 / 4); timm (and torchvision) keep
       the previous dilation (1 / 2) in the first block of each dilated stage.
    3. The classic max-pool uses ceil mode: a 512x1024 input gives 65x129 features, not 64x128.
    """
    if not isinstance(backbone, ResNetBackbone) or not backbone.is_bottleneck:
        arch = getattr(backbone, "arch", type(backbone).__name__)
        raise UserError(
            f"model.init: caffe-deeplab weights need a Bottleneck ResNet (resnet50, resnet101), "
            f"not '{arch}'"
        )
    body = backbone.body
    first = body.layer2[0]
    first.conv1.stride, first.conv2.stride = (2, 2), (1, 1)
    for stage, dilation in ((body.layer3, 2), (body.layer4, 4)):
        stage[0].conv2.dilation = (dilation, dilation)
        stage[0].conv2.padding = (dilation, dilation)
    body.maxpool.ceil_mode = True
    backbone.geometry = "caffe"


class TimmBackbone(Backbone):
    """Any timm model with ``features_only`` support, every stage it offers (e.g. ConvNeXt and
    Swin: 4 stages at strides 4-32). The auxiliary head reads the second deepest."""

    def __init__(self, body: nn.Module, arch: str, pretrained: str | None = None):
        super().__init__()
        self.body = body
        self.arch = arch
        self.pretrained = pretrained
        self.levels = _levels(body)
        self.aux_level = len(self.levels) - 2
        # Swin and other token models give NHWC maps; the contract is NCHW.
        self.nhwc = str(getattr(body, "output_fmt", "NCHW")) in (str(Format.NHWC), "NHWC")
        cfg = getattr(body, "pretrained_cfg", None) or {}
        mean, std = tuple(cfg.get("mean", ())), tuple(cfg.get("std", ()))
        norm = normalisation_named(mean, std) if len(mean) == len(std) == 3 else "imagenet"
        if norm is None:
            raise UserError(f"model.backbone: timm model '{arch}' expects inputs normalised with "
                            f"mean {mean}, std {std}, which udabench does not know; register it "
                            f"with a normalisation of its own (docs/models.md)")
        self.normalisation = norm

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = self.body(x)
        return [o.permute(0, 3, 1, 2) for o in outs] if self.nhwc else list(outs)

    def init_state_dict(self, sd: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
        """A timm checkpoint of the whole model onto the feature extractor: timm flattens nested
        sequentials (``stem.0.weight`` -> ``stem_0.weight``); keys the extractor lacks (the
        classifier, a final norm) are left out and listed in the notes."""
        sd = weights.backbone_keys(sd, notes)
        target = self.body.state_dict()
        out, dropped = {}, []
        for key, value in sd.items():
            flat = re.sub(r"^([A-Za-z_]\w*)\.(\d+)\.", r"\1_\2.", key)
            name = key if key in target else flat if flat in target else None
            if name is None:
                dropped.append(key)
            else:
                out[name] = value
        if dropped:
            notes.append(f"ignored {len(dropped)} keys the feature extractor has no use for "
                         f"({', '.join(dropped[:3])}{', ...' if len(dropped) > 3 else ''})")
        return out


def _offline_hint() -> str:
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"):
        return "HF_HUB_OFFLINE is set and the weights are not in the local cache"
    return "no network or hub access"


def _create(arch: str, pretrained: str | None, kwargs: dict[str, Any]) -> tuple[nn.Module, str | None]:
    """``timm.create_model(arch[.tag], features_only=True, **kwargs)``, errors as UserErrors."""
    if pretrained is None:
        return timm.create_model(arch, pretrained=False, features_only=True, **kwargs), None
    tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
    if pretrained == DEFAULT_WEIGHTS:
        if not tags:
            raise UserError(f"model.init: timm has no pretrained weights for {arch}; use "
                            f"model.init = 'scratch' or a local weights file")
        cfg = timm.models.get_pretrained_cfg(arch)
        pretrained = cfg.tag if cfg is not None and cfg.tag in tags else tags[0]
    if pretrained not in tags:
        raise UserError(
            f"model.init: timm has no pretrained tag '{pretrained}' for {arch}; "
            f"known: {', '.join(tags) or 'none'}"
        )
    name = f"{arch}.{pretrained}"
    try:
        body = timm.create_model(name, pretrained=True, features_only=True, **kwargs)
    except Exception as exc:  # hub/network failures come in many types (OSError, httpx, hf errors)
        raise UserError(
            f"model.init: could not fetch the ImageNet weights '{name}' through the timm hub "
            f"({_offline_hint()}: {type(exc).__name__}); download them elsewhere and set "
            f"model.init to the local .pth/.safetensors file"
        ) from exc
    return body, pretrained


def timm_backbone(arch: str, pretrained: str | None = None) -> ResNetBackbone:
    """A timm ResNet with ``features_only=True, output_stride=8, out_indices=(1, 2, 3, 4)``."""
    if pretrained == DEFAULT_WEIGHTS:
        pretrained = RESNET_IMAGENET_TAG
    body, tag = _create(arch, pretrained, dict(output_stride=OUTPUT_STRIDE, out_indices=OUT_INDICES))
    return ResNetBackbone(body, arch, tag)


def timm_features(arch: str, pretrained: str | None = None, **kwargs: Any) -> TimmBackbone:
    """Any timm model through ``features_only`` at its own strides (``kwargs`` go to timm)."""
    if pretrained == DEFAULT_WEIGHTS and RESNET_IMAGENET_TAG in [
            n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]:
        pretrained = RESNET_IMAGENET_TAG  # what bare "imagenet" meant for ResNets all along
    try:
        body, tag = _create(arch, pretrained, kwargs)
    except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
        raise UserError(f"model.backbone: timm cannot build '{arch}' as a feature extractor "
                        f"(features_only): {str(exc).splitlines()[0][:160]}") from exc
    return TimmBackbone(body, arch, tag)


def small_resnet_backbone(
    arch: str,
    block: type[BasicBlock] | type[Bottleneck],
    layers: tuple[int, ...],
    channels: tuple[int, ...],
    stem_width: int,
    pretrained: str | None = None,
) -> ResNetBackbone:
    """A timm ResNet built from its class (no hub entry, hence no pretrained weights)."""
    from timm.models import FeatureListNet

    if pretrained is not None:
        raise UserError(
            f"model.init: backbone '{arch}' has no pretrained weights; use model.init = 'scratch' "
            f"or a local weights file"
        )
    net = ResNet(
        block=block, layers=layers, channels=channels, stem_width=stem_width,
        output_stride=OUTPUT_STRIDE,
    )
    return ResNetBackbone(FeatureListNet(net, out_indices=OUT_INDICES), arch)


@register_backbone("resnet101", "ResNet-101 (timm), output stride 8: the DeepLabV2 backbone")
def resnet101(pretrained: str | None = None) -> ResNetBackbone:
    return timm_backbone("resnet101", pretrained)


@register_backbone("resnet50", "ResNet-50 (timm), output stride 8")
def resnet50(pretrained: str | None = None) -> ResNetBackbone:
    return timm_backbone("resnet50", pretrained)


@register_backbone("resnet18", "ResNet-18 (timm), output stride 8")
def resnet18(pretrained: str | None = None) -> ResNetBackbone:
    return timm_backbone("resnet18", pretrained)


@register_backbone("resnet-tiny", "4-block BasicBlock ResNet, 16-128 channels: MiniCity and tests")
def resnet_tiny(pretrained: str | None = None) -> ResNetBackbone:
    # Sized so that forward+backward of a batch of 4 at 128x256 stays well under 0.3 s on 2 cores.
    return small_resnet_backbone(
        "resnet-tiny", BasicBlock, (1, 1, 1, 1), (16, 32, 64, 128), stem_width=16,
        pretrained=pretrained,
    )


@register_backbone("convnext_tiny", "ConvNeXt-T (timm), 4 stages at strides 4-32")
def convnext_tiny(pretrained: str | None = None) -> TimmBackbone:
    return timm_features("convnext_tiny", pretrained)


@register_backbone("swin_tiny_patch4_window7_224", "Swin-T (timm), any input size, strides 4-32")
def swin_tiny(pretrained: str | None = None) -> TimmBackbone:
    # dynamic_img_size: windows padded and shift masks computed for the actual input size.
    return timm_features("swin_tiny_patch4_window7_224", pretrained, dynamic_img_size=True)
