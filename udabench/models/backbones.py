"""ResNet backbones on timm, dilated to output stride 8, returning (layer3, layer4) features.

Every factory is registered with ``@register_model`` and has the signature
``factory(pretrained: str | None = None) -> ResNetBackbone``: ``pretrained`` is a timm pretrained
tag (e.g. ``"tv_in1k"``) fetched through the hub, or None for timm's random initialisation.
"""
from __future__ import annotations

import os

import timm
import torch
from timm.models import FeatureListNet
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from udabench.errors import UserError
from udabench.registry import register_model

OUTPUT_STRIDE = 8
OUT_INDICES = (3, 4)  # timm's ResNet feature_info: act1, layer1, layer2, layer3, layer4


class ResNetBackbone(nn.Module):
    """A timm ResNet cut after layer4 (timm ``features_only``), layer3/4 dilated 2/4.

    ``body`` is timm's FeatureListNet, whose state-dict keys are the plain ResNet keys
    (``conv1.weight``, ``layer1.0.conv1.weight``, ...), the layout timm and torchvision share.
    """

    def __init__(self, body: FeatureListNet, arch: str, pretrained: str | None = None):
        super().__init__()
        self.body = body
        self.arch = arch
        self.pretrained = pretrained  # timm tag the weights came from, for provenance
        chs = body.feature_info.channels()
        self.channels: tuple[int, int] = (int(chs[0]), int(chs[1]))  # (layer3, layer4)
        self.geometry = "timm"  # "caffe" once apply_caffe_geometry() ran

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c3, c4 = self.body(x)
        return c3, c4

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
    if not backbone.is_bottleneck:
        raise UserError(
            f"model.init: caffe-deeplab weights need a Bottleneck ResNet (resnet50, resnet101), "
            f"not '{backbone.arch}'"
        )
    body = backbone.body
    first = body.layer2[0]
    first.conv1.stride, first.conv2.stride = (2, 2), (1, 1)
    for stage, dilation in ((body.layer3, 2), (body.layer4, 4)):
        stage[0].conv2.dilation = (dilation, dilation)
        stage[0].conv2.padding = (dilation, dilation)
    body.maxpool.ceil_mode = True
    backbone.geometry = "caffe"


def _offline_hint() -> str:
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"):
        return "HF_HUB_OFFLINE is set and the weights are not in the local cache"
    return "no network or hub access"


def timm_backbone(arch: str, pretrained: str | None = None) -> ResNetBackbone:
    """``timm.create_model(arch, features_only=True, output_stride=8, out_indices=(3, 4))``."""
    kwargs = dict(features_only=True, output_stride=OUTPUT_STRIDE, out_indices=OUT_INDICES)
    if pretrained is None:
        return ResNetBackbone(timm.create_model(arch, pretrained=False, **kwargs), arch)
    name = f"{arch}.{pretrained}"
    tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
    if pretrained not in tags:
        raise UserError(
            f"model.init: timm has no pretrained tag '{pretrained}' for {arch}; "
            f"known: {', '.join(tags) or 'none'}"
        )
    try:
        body = timm.create_model(name, pretrained=True, **kwargs)
    except Exception as exc:  # hub/network failures come in many types (OSError, httpx, hf errors)
        raise UserError(
            f"model.init: could not fetch the ImageNet weights '{name}' through the timm hub "
            f"({_offline_hint()}: {type(exc).__name__}); download them elsewhere and set "
            f"model.init to the local .pth/.safetensors file"
        ) from exc
    return ResNetBackbone(body, arch, pretrained)


def small_resnet_backbone(
    arch: str,
    block: type[BasicBlock] | type[Bottleneck],
    layers: tuple[int, ...],
    channels: tuple[int, ...],
    stem_width: int,
    pretrained: str | None = None,
) -> ResNetBackbone:
    """A timm ResNet built from its class (no hub entry, hence no pretrained weights)."""
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


@register_model("resnet101", "ResNet-101 (timm), output stride 8: the DeepLabV2 backbone")
def resnet101(pretrained: str | None = None) -> ResNetBackbone:
    return timm_backbone("resnet101", pretrained)


@register_model("resnet50", "ResNet-50 (timm), output stride 8")
def resnet50(pretrained: str | None = None) -> ResNetBackbone:
    return timm_backbone("resnet50", pretrained)


@register_model("resnet18", "ResNet-18 (timm), output stride 8")
def resnet18(pretrained: str | None = None) -> ResNetBackbone:
    return timm_backbone("resnet18", pretrained)


@register_model("resnet-tiny", "4-block BasicBlock ResNet, 16-128 channels: MiniCity and tests")
def resnet_tiny(pretrained: str | None = None) -> ResNetBackbone:
    # Sized so that forward+backward of a batch of 4 at 128x256 stays well under 0.3 s on 2 cores.
    return small_resnet_backbone(
        "resnet-tiny", BasicBlock, (1, 1, 1, 1), (16, 32, 64, 128), stem_width=16,
        pretrained=pretrained,
    )
