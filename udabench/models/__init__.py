"""Models: registered backbones and heads, the segmenter built from them, the discriminator.

Importing this package registers the built-in backbones (``udabench.registry.MODELS``: ResNets,
timm ConvNeXt/Swin, MiT) and heads (``udabench.registry.HEADS``: aspp, daformer).
docs/models.md describes the backbone and head contracts.
"""
from udabench.models import backbones, daformer_head, heads, mit  # noqa: F401  (registrations)
from udabench.models.backbones import ResNetBackbone, TimmBackbone, apply_caffe_geometry
from udabench.models.contract import (
    DEFAULT_WEIGHTS,
    Backbone,
    FeatureLevel,
    check_backbone,
    check_head,
)
from udabench.models.daformer_head import DAFormerHead
from udabench.models.discriminator import Discriminator
from udabench.models.heads import ASPPClassifier
from udabench.models.mit import MiTBackbone, MixVisionTransformer
from udabench.models.normalisation import NORMALISATIONS, InputNorm
from udabench.models.segmenter import (
    BN_MODES,
    Segmenter,
    SegmenterConfig,
    build_backbone,
    build_segmenter,
    parse_init,
    split_backbone,
)

__all__ = [
    "ASPPClassifier", "BN_MODES", "Backbone", "DAFormerHead", "DEFAULT_WEIGHTS", "Discriminator",
    "FeatureLevel", "InputNorm", "MiTBackbone", "MixVisionTransformer", "NORMALISATIONS",
    "ResNetBackbone", "Segmenter", "SegmenterConfig", "TimmBackbone", "apply_caffe_geometry",
    "build_backbone", "build_segmenter", "check_backbone", "check_head", "parse_init",
    "split_backbone",
]
