"""DeepLabV2: dilated ResNet + ASPP-sum classifier, with the normalisation its weights need.

``Segmenter.forward`` takes float RGB images in [0, 1], ``[B, 3, H, W]`` (docs/conventions.md) and
returns ``{"out": main logits, "aux": layer3 logits or None, "feat": layer4 features}``, all at
feature resolution (1/8 of the input; the Caffe geometry rounds up: 512x1024 -> 65x129).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar
from itertools import chain
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from udabench.errors import ConfigError, UserError
from udabench.models import weights
from udabench.models.backbones import ResNetBackbone, apply_caffe_geometry
from udabench.registry import MODELS, did_you_mean
from udabench.settings import Settings, setting

# torchvision's original ImageNet weights, as used by DeepLabV2-era PyTorch code.
IMAGENET_TAG = "tv_in1k"
BN_MODES = ("frozen", "frozen_affine", "train")
ASPP_DILATIONS = (6, 12, 18, 24)
INIT_FORMS = "imagenet, imagenet:<timm tag>, scratch, caffe-deeplab:<path> or a weights file path"

# protocol.md section 6: the normalisation belongs to the weights, not to the dataset.
NORMALISATIONS: dict[str, dict] = {
    "imagenet": dict(channel_order="RGB", scale=1.0, mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225)),
    "caffe": dict(channel_order="BGR", scale=255.0,
                  mean=(104.00698793, 116.66876762, 122.67891434), std=(1.0, 1.0, 1.0)),
}


@dataclass
class SegmenterConfig(Settings):
    WHERE: ClassVar[str] = "model"

    backbone: str = setting("resnet101", nonempty=True, doc="a name registered with @register_model")
    init: str = setting("imagenet", nonempty=True, doc=INIT_FORMS + "; recorded (moves mIoU 1-2)")
    aspp_branches: int = setting(4, choices=(2, 4),
                                 doc="2 reproduces the AdaptSegNet/DACS classifier (6, 12 only)")
    multi_level: bool = setting(False, free=True, doc="auxiliary classifier on layer3")
    bn_mode: str = setting("frozen_affine", choices=BN_MODES, doc="see Segmenter")
    head_lr_mult: float = setting(10.0, gt=0, doc="learning-rate multiplier of the head")

    def check(self) -> None:
        if self.backbone not in MODELS:
            names = MODELS.names()
            raise self.fail("backbone", f"unknown backbone{did_you_mean(self.backbone, names)}; "
                                        f"known: {', '.join(names)}")
        parse_init(self.init)
        kind, arg = parse_init(self.init)
        if kind in ("caffe", "file") and not Path(arg).expanduser().is_file():
            raise self.fail("init", "the weights file does not exist; give an existing path, imagenet or scratch")

    def init_kind(self) -> tuple[str, str]:
        return parse_init(self.init)


def parse_init(init: str) -> tuple[str, str]:
    """``init`` -> (kind, argument): ("imagenet", tag) | ("scratch", "") | ("caffe", path) |
    ("file", path)."""
    if not isinstance(init, str) or not init:
        raise ConfigError(f"model.init: expected one of {INIT_FORMS}, got {init!r}")
    if init == "scratch":
        return "scratch", ""
    if init == "imagenet":
        return "imagenet", IMAGENET_TAG
    if init.startswith("imagenet:") and len(init) > len("imagenet:"):
        return "imagenet", init.split(":", 1)[1]
    if init.startswith("caffe-deeplab:") and len(init) > len("caffe-deeplab:"):
        return "caffe", init.split(":", 1)[1]
    if init.endswith(weights.WEIGHT_SUFFIXES):
        return "file", init
    raise ConfigError(f"model.init: {init!r} is not one of {INIT_FORMS} "
                      f"(files end in {', '.join(weights.WEIGHT_SUFFIXES)})")


class InputNorm(nn.Module):
    """[0, 1] RGB -> what the weights were trained on (channel order, scale, mean, std)."""

    def __init__(self, kind: str):
        super().__init__()
        spec = NORMALISATIONS[kind]
        self.kind = kind
        self.bgr = spec["channel_order"] == "BGR"
        self.scale = float(spec["scale"])
        # Non-persistent: the constants follow the init, they are not learnt state.
        for name in ("mean", "std"):
            value = torch.tensor(spec[name]).reshape(1, 3, 1, 1)
            self.register_buffer(name, value, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            images = images.flip(1)
        return (images * self.scale - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def describe(self) -> dict:
        spec = NORMALISATIONS[self.kind]
        return {"name": self.kind, **{k: (list(v) if isinstance(v, tuple) else v)
                                      for k, v in spec.items()}}


class ASPPClassifier(nn.Module):
    """DeepLabV2's classifier: parallel dilated 3x3 convs to the classes, summed (no BN/ReLU)."""

    def __init__(self, in_channels: int, num_classes: int, branches: int = 4):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True)
            for d in ASPP_DILATIONS[:branches]
        )
        for conv in self.convs:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


class Segmenter(nn.Module):
    """DeepLabV2 segmenter. BN modes (``bn_mode``):

    - ``frozen``: BN always in eval mode (running statistics never move), affine frozen.
    - ``frozen_affine``: affine frozen, running statistics follow ``train()``: the classic code.
      Whatever passes through in train mode, target images included, moves the statistics.
    - ``train``: ordinary trainable BN.
    """

    def __init__(self, backbone: ResNetBackbone, num_classes: int, cfg: SegmenterConfig,
                 norm: str = "imagenet"):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.bn_mode = cfg.bn_mode
        self.head_lr_mult = float(cfg.head_lr_mult)
        self.normalize = InputNorm(norm)
        self.backbone = backbone
        c3, c4 = backbone.channels
        self.head = ASPPClassifier(c4, num_classes, cfg.aspp_branches)
        self.aux_head = (ASPPClassifier(c3, num_classes, cfg.aspp_branches)
                         if cfg.multi_level else None)
        self.init_notes: list[str] = []
        if self.bn_mode != "train":
            for bn in self.batchnorms():
                for p in (bn.weight, bn.bias):
                    if p is not None:
                        p.requires_grad_(False)
        self.train()

    @property
    def feature_channels(self) -> int:
        """Channels of the ``feat`` output (the deepest backbone stage): what methods align."""
        return int(self.backbone.channels[1])

    def batchnorms(self) -> list[nn.modules.batchnorm._BatchNorm]:
        return [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True) -> "Segmenter":
        super().train(mode)
        if self.bn_mode == "frozen":
            for bn in self.batchnorms():
                bn.eval()
        return self

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        if not images.is_floating_point():
            raise TypeError(f"Segmenter expects float images in [0, 1], got {images.dtype}")
        c3, c4 = self.backbone(self.normalize(images))
        aux = self.aux_head(c3) if self.aux_head is not None else None
        return {"out": self.head(c4), "aux": aux, "feat": c4}

    def param_groups(self, lr: float) -> list[dict]:
        """Backbone at ``lr``, heads at ``head_lr_mult * lr``; frozen parameters left out."""
        heads = [self.head] + ([self.aux_head] if self.aux_head is not None else [])
        groups = [
            ("backbone", self.backbone.parameters(), 1.0),
            ("head", chain.from_iterable(h.parameters() for h in heads), self.head_lr_mult),
        ]
        return [
            {"name": name, "params": [p for p in params if p.requires_grad], "lr": lr * mult,
             "lr_mult": mult}
            for name, params, mult in groups
        ]

    @torch.no_grad()
    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """Logit size for an input size, measured by a shape-only (meta device) forward."""
        tensors = chain(self.named_parameters(), self.named_buffers())
        meta = {n: torch.empty_like(t, device="meta") for n, t in tensors}
        out = functional_call(self, meta, (torch.empty(1, 3, height, width, device="meta"),))
        return int(out["out"].shape[-2]), int(out["out"].shape[-1])

    def describe(self, input_size: tuple[int, int] = (512, 1024)) -> dict:
        """Provenance for a run record: architecture, init, normalisation, measured stride."""
        h, w = self.feature_size(*input_size)
        return {
            "backbone": self.cfg.backbone,
            "init": self.cfg.init,
            "pretrained_tag": self.backbone.pretrained,
            "geometry": self.backbone.geometry,
            "num_classes": self.num_classes,
            "aspp_branches": len(self.head.convs),
            "multi_level": self.aux_head is not None,
            "bn_mode": self.bn_mode,
            "head_lr_mult": self.head_lr_mult,
            "normalisation": self.normalize.describe(),
            "feature_size": {"input": list(input_size), "output": [h, w]},
            "output_stride": [input_size[0] / h, input_size[1] / w],
            "parameters": sum(p.numel() for p in self.parameters()),
            "init_notes": list(self.init_notes),
        }


def _load_heads(seg: Segmenter, state: dict[str, torch.Tensor], source: str) -> None:
    target = seg.state_dict()
    for key, value in state.items():
        if value.shape != target[key].shape:
            raise UserError(f"{source}: classifier '{key}' has shape {list(value.shape)}, "
                            f"the model needs {list(target[key].shape)}")
    seg.load_state_dict(state, strict=False)


def build_segmenter(cfg: SegmenterConfig, num_classes: int = 19) -> Segmenter:
    """Build the backbone from the registry, attach the heads, apply ``cfg.init``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes: expected a positive integer, got {num_classes!r}")
    kind, arg = cfg.init_kind()
    factory = MODELS.get(cfg.backbone)
    backbone = factory(pretrained=arg if kind == "imagenet" else None)
    if kind == "caffe":
        apply_caffe_geometry(backbone)
    seg = Segmenter(backbone, num_classes, cfg, norm="caffe" if kind == "caffe" else "imagenet")
    what = f"{cfg.backbone} backbone"
    if kind == "file":
        sd = weights.read_state_dict(Path(arg).expanduser())
        keys = list(weights.strip_wrappers(sd))  # also strips Scale., so check both forms
        if any(k.startswith("Scale.") for k in sd) or any(weights.CAFFE_CLASSIFIER.match(k)
                                                         for k in keys):
            raise UserError(f"model.init: '{arg}' is a classic DeepLabV2 (Caffe) file; set "
                            f"model.init = 'caffe-deeplab:{arg}'")
        weights.load_strict(seg.backbone.body, weights.backbone_keys(sd, seg.init_notes),
                            what, f"model.init '{arg}'")
    elif kind == "caffe":
        source = f"model.init '{cfg.init}'"
        resnet, classifiers = weights.split_caffe(weights.read_state_dict(Path(arg).expanduser()),
                                                  source)
        weights.load_strict(seg.backbone.body, resnet, what, source)
        c3, c4 = backbone.channels
        heads = {c4: ("head", seg.head)}
        if seg.aux_head is not None:
            heads[c3] = ("aux_head", seg.aux_head)
        _load_heads(seg, weights.caffe_head_state(classifiers, heads, num_classes, seg.init_notes),
                    source)
    return seg
