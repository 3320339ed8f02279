"""The segmenter: a registered backbone + a registered head (+ an optional auxiliary head).

``Segmenter.forward`` takes float RGB images in [0, 1], ``[B, 3, H, W]`` (docs/conventions.md) and
returns ``{"out": main logits, "aux": auxiliary logits or None, "feat": deepest backbone features}``
(plus ``"features"``, every backbone level, with ``return_features=True``), logits at the head's
resolution: 1/8 of the input for DeepLabV2 (the Caffe geometry rounds up: 512x1024 -> 65x129),
1/4 for DAFormer. docs/models.md describes the backbone and head contracts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, ClassVar

import timm
import torch
from torch import nn

from udabench.errors import ConfigError, UserError
from udabench.models import weights
from udabench.models.backbones import RESNET_IMAGENET_TAG, apply_caffe_geometry, timm_features
from udabench.models.contract import DEFAULT_WEIGHTS, Backbone, meta_forward
from udabench.models.heads import ASPPClassifier
from udabench.models.normalisation import InputNorm
from udabench.registry import HEADS, MODELS, did_you_mean
from udabench.settings import Settings, setting

IMAGENET_TAG = RESNET_IMAGENET_TAG
BN_MODES = ("frozen", "frozen_affine", "train")
INIT_FORMS = ("imagenet, imagenet:<timm tag>, minicity-pretrained, scratch (or none), "
              "caffe-deeplab:<path> or a weights file path")
MINICITY_PRETRAINED = "minicity-pretrained"  # the shipped MiniCity stand-in for ImageNet weights
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def split_backbone(name: str) -> tuple[str, str | None]:
    """``"resnet101.tv_in1k"`` -> ("resnet101", "tv_in1k"); a name without a tag -> (name, None)."""
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


@dataclass
class SegmenterConfig(Settings):
    WHERE: ClassVar[str] = "model"

    backbone: str = setting("resnet101", nonempty=True,
                            doc="a registered backbone or any timm model name; a timm tag after a dot "
                                "(resnet101.tv_in1k) selects the ImageNet weights")
    init: str = setting("imagenet", nonempty=True, doc=INIT_FORMS + "; recorded (moves mIoU 1-2)")
    aspp_branches: int = setting(4, choices=(2, 4),
                                 doc="2 reproduces the AdaptSegNet/DACS classifier (6, 12 only)")
    multi_level: bool = setting(False, free=True, doc="auxiliary head on the backbone's aux level")
    bn_mode: str = setting("frozen_affine", choices=BN_MODES, doc="backbone BatchNorm, see Segmenter")
    head_lr_mult: float = setting(10.0, gt=0, doc="learning-rate multiplier of the heads")
    head: str = setting("aspp", nonempty=True,
                        doc="a head registered with @register_head: aspp (DeepLabV2), daformer")
    head_channels: int = setting(256, ge=1, doc="hidden width of heads that have one (daformer)")

    def check(self) -> None:
        arch, tag = split_backbone(self.backbone)
        if arch not in MODELS and not timm.is_model(arch):
            names = MODELS.names()
            raise self.fail("backbone", f"unknown backbone{did_you_mean(arch, names)}; known: "
                                        f"{', '.join(names)}, or any timm model name")
        if self.head not in HEADS:
            names = HEADS.names()
            raise self.fail("head", f"unknown head{did_you_mean(self.head, names)}; "
                                    f"known: {', '.join(names)}")
        kind, arg = parse_init(self.init)
        if kind in ("caffe", "file") and not Path(arg).expanduser().is_file():
            raise self.fail("init", "the weights file does not exist; give an existing path, imagenet or scratch")
        if kind == "minicity":
            from udabench.minicity.pretrained import weights_path

            weights_path(arch)  # shipped for this backbone, and intact (one line otherwise)
        if tag is not None and not (self.init == "imagenet" or (kind == "imagenet" and arg == tag)):
            raise self.fail("backbone", f"the tag '{tag}' selects timm's pretrained weights, but "
                                        f"model.init = {self.init!r}; set model.init = 'imagenet' "
                                        f"or drop the tag")

    def init_kind(self) -> tuple[str, str]:
        return parse_init(self.init)

    def pretrained_request(self) -> str | None:
        """What the backbone factory is asked for: None (no hub weights), a tag, or
        DEFAULT_WEIGHTS (bare ``imagenet``: the backbone's usual ImageNet weights)."""
        kind, arg = parse_init(self.init)
        if kind != "imagenet":
            return None
        tag = split_backbone(self.backbone)[1]
        return tag or (DEFAULT_WEIGHTS if self.init == "imagenet" else arg)

    def hash_dict(self) -> dict[str, Any]:
        """The settings as a dict for a run's config hash, leaving out the keys added after runs
        were first hashed while they hold their defaults (so those runs keep their hashes)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, default in LATER_DEFAULTS.items():
            if d.get(key) == default:
                d.pop(key)
        return d


LATER_DEFAULTS = {"head": "aspp", "head_channels": 256}


def parse_init(init: str) -> tuple[str, str]:
    """``init`` -> (kind, argument): ("imagenet", tag) | ("scratch", "") | ("caffe", path) |
    ("file", path). Bare ``imagenet`` gives tag ``tv_in1k`` (the ResNets' weights; other backbones
    use their own default, see ``SegmenterConfig.pretrained_request``)."""
    if not isinstance(init, str) or not init:
        raise ConfigError(f"model.init: expected one of {INIT_FORMS}, got {init!r}")
    if init in ("scratch", "none"):
        return "scratch", ""
    if init == MINICITY_PRETRAINED:  # the file depends on the backbone: resolved when building
        return "minicity", ""
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


class Segmenter(nn.Module):
    """Backbone + head. BN modes (``bn_mode``, the backbone's BatchNorm layers; a head's own
    BatchNorm, e.g. DAFormer's, always trains: it starts from scratch):

    - ``frozen``: BN always in eval mode (running statistics never move), affine frozen.
    - ``frozen_affine``: affine frozen, running statistics follow ``train()``: the classic code.
      Whatever passes through in train mode, target images included, moves the statistics.
    - ``train``: ordinary trainable BN.
    """

    def __init__(self, backbone: Backbone, num_classes: int, cfg: SegmenterConfig,
                 norm: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.bn_mode = cfg.bn_mode
        self.head_lr_mult = float(cfg.head_lr_mult)
        self.normalize = InputNorm(norm or backbone.normalisation)
        self.backbone = backbone
        levels = tuple(backbone.levels)
        self.aux_index = backbone.aux_level % len(levels)
        factory = HEADS.get(cfg.head)
        self.head = factory(levels, num_classes, cfg)
        self.aux_head = (factory(levels[:self.aux_index + 1], num_classes, cfg)
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
        """Channels of the ``feat`` output (the deepest backbone level): what methods align."""
        return int(self.backbone.levels[-1].channels)

    def batchnorms(self) -> list[nn.modules.batchnorm._BatchNorm]:
        """The backbone's BatchNorm layers: what ``bn_mode`` acts on."""
        return [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True) -> "Segmenter":
        super().train(mode)
        if self.bn_mode == "frozen":
            for bn in self.batchnorms():
                bn.eval()
        return self

    def forward(self, images: torch.Tensor, return_features: bool = False) -> dict[str, Any]:
        if not images.is_floating_point():
            raise TypeError(f"Segmenter expects float images in [0, 1], got {images.dtype}")
        feats = self.backbone(self.normalize(images))
        aux = self.aux_head(feats[:self.aux_index + 1]) if self.aux_head is not None else None
        out = {"out": self.head(feats), "aux": aux, "feat": feats[-1]}
        if return_features:
            out["features"] = list(feats)
        return out

    def param_groups(self, lr: float, norm_weight_decay: float | None = None) -> list[dict]:
        """Backbone at ``lr``, heads at ``head_lr_mult * lr``; frozen parameters left out.

        ``norm_weight_decay`` (e.g. 0.0 for SegFormer/DAFormer's ``norm`` decay_mult 0) puts the
        backbone's normalisation-layer parameters in a group ``backbone_norm`` carrying that
        ``weight_decay``; None keeps them with the rest of the backbone.
        """
        heads = [self.head] + ([self.aux_head] if self.aux_head is not None else [])
        backbone = list(self.backbone.parameters())
        norm_ids: set[int] = set()
        if norm_weight_decay is not None:
            norm_ids = {id(p) for m in self.backbone.modules() if isinstance(m, NORM_LAYERS)
                        for p in m.parameters(recurse=False)}
        groups: list[tuple[str, Any, float, dict]] = [
            ("backbone", [p for p in backbone if id(p) not in norm_ids], 1.0, {}),
            ("head", chain.from_iterable(h.parameters() for h in heads), self.head_lr_mult, {}),
        ]
        if norm_ids:
            groups.insert(1, ("backbone_norm", [p for p in backbone if id(p) in norm_ids], 1.0,
                              {"weight_decay": float(norm_weight_decay)}))
        out = [
            {"name": name, "params": [p for p in params if p.requires_grad], "lr": lr * mult,
             "lr_mult": mult, **extra}
            for name, params, mult, extra in groups
        ]
        return [g for g in out if g["params"] or g["name"] != "backbone_norm"]

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """Logit size for an input size, measured by a shape-only (meta device) forward."""
        out = meta_forward(self, torch.empty(1, 3, height, width, device="meta"))
        return int(out["out"].shape[-2]), int(out["out"].shape[-1])

    def describe(self, input_size: tuple[int, int] = (512, 1024)) -> dict:
        """Provenance for a run record: architecture, init, normalisation, measured stride."""
        h, w = self.feature_size(*input_size)
        head = self.head.describe() if hasattr(self.head, "describe") else {}
        return {
            "backbone": self.cfg.backbone,
            "init": self.cfg.init,
            "pretrained_tag": self.backbone.pretrained,
            "geometry": self.backbone.geometry,
            "num_classes": self.num_classes,
            **({"aspp_branches": head.pop("aspp_branches")} if "aspp_branches" in head else {}),
            "multi_level": self.aux_head is not None,
            "bn_mode": self.bn_mode,
            "head_lr_mult": self.head_lr_mult,
            "normalisation": self.normalize.describe(),
            "feature_size": {"input": list(input_size), "output": [h, w]},
            "output_stride": [input_size[0] / h, input_size[1] / w],
            "parameters": sum(p.numel() for p in self.parameters()),
            "init_notes": list(self.init_notes),
            "head": {"name": self.cfg.head, **head},
            "levels": [[lv.name, lv.channels, lv.reduction] for lv in self.backbone.levels],
        }


def _load_heads(seg: Segmenter, state: dict[str, torch.Tensor], source: str) -> None:
    target = seg.state_dict()
    for key, value in state.items():
        if value.shape != target[key].shape:
            raise UserError(f"{source}: classifier '{key}' has shape {list(value.shape)}, "
                            f"the model needs {list(target[key].shape)}")
    seg.load_state_dict(state, strict=False)


def build_backbone(cfg: SegmenterConfig) -> Backbone:
    """The backbone ``cfg`` names: a registered factory, else timm's model of that name."""
    arch, _ = split_backbone(cfg.backbone)
    pretrained = cfg.pretrained_request()
    if arch in MODELS:
        backbone = MODELS.get(arch)(pretrained=pretrained)
    else:
        backbone = timm_features(arch, pretrained)
    if not isinstance(backbone, Backbone):
        raise UserError(f"model.backbone: the factory registered as '{arch}' returned a "
                        f"{type(backbone).__name__}, not a udabench.models.Backbone (docs/models.md)")
    return backbone


def build_segmenter(cfg: SegmenterConfig, num_classes: int = 19) -> Segmenter:
    """Build the backbone and heads from the registries, apply ``cfg.init``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes: expected a positive integer, got {num_classes!r}")
    kind, arg = cfg.init_kind()
    backbone = build_backbone(cfg)
    if kind == "caffe":
        apply_caffe_geometry(backbone)
    seg = Segmenter(backbone, num_classes, cfg, norm="caffe" if kind == "caffe" else None)
    what = f"{cfg.backbone} backbone"
    if kind == "minicity":
        from udabench.minicity.pretrained import weights_path

        kind, arg = "file", str(weights_path(split_backbone(cfg.backbone)[0]))
        seg.init_notes.append(f"{MINICITY_PRETRAINED}: {Path(arg).name} sha256 "
                              f"{weights.file_sha256(Path(arg))}")
    if kind == "file":
        sd = weights.read_state_dict(Path(arg).expanduser())
        keys = list(weights.strip_wrappers(sd))  # also strips Scale., so check both forms
        if any(k.startswith("Scale.") for k in sd) or any(weights.CAFFE_CLASSIFIER.match(k)
                                                         for k in keys):
            raise UserError(f"model.init: '{arg}' is a classic DeepLabV2 (Caffe) file; set "
                            f"model.init = 'caffe-deeplab:{arg}'")
        weights.load_strict(seg.backbone.body, seg.backbone.init_state_dict(sd, seg.init_notes),
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
        heads = {c: h for c, h in heads.items() if isinstance(h[1], ASPPClassifier)}
        if not heads:
            seg.init_notes.append(f"classifiers not loaded: head '{cfg.head}' is not the ASPP")
        _load_heads(seg, weights.caffe_head_state(classifiers, heads, num_classes, seg.init_notes),
                    source)
    _note_dead_frozen_scales(seg)
    return seg


def _note_dead_frozen_scales(seg: Segmenter) -> None:
    """Record BatchNorm layers whose frozen scale is 0 everywhere: what they normalise never
    reaches the output. timm zero-initialises the last scale of every residual branch, so a
    ResNet from random weights with a frozen affine (bn_mode frozen or frozen_affine) trains
    with every residual branch switched off: the stem and the shortcut convolutions only."""
    if seg.bn_mode == "train":
        return
    dead = [bn for bn in seg.batchnorms() if bn.weight is not None and not bn.weight.any()]
    if dead:
        seg.init_notes.append(f"{len(dead)} of {len(seg.batchnorms())} backbone BatchNorm layers "
                              f"have frozen scales of 0 (bn_mode {seg.bn_mode}): their branches "
                              f"never contribute (random weights zero-initialise each residual "
                              f"branch's last scale)")
