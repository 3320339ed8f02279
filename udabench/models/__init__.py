"""Models: registered backbones, the DeepLabV2 segmenter and the output-space discriminator.

Importing this package registers the built-in backbones (``udabench.registry.MODELS``).
"""
from udabench.models import backbones  # noqa: F401  (registers the backbone factories)
from udabench.models.backbones import ResNetBackbone, apply_caffe_geometry
from udabench.models.deeplabv2 import (
    BN_MODES,
    NORMALISATIONS,
    ASPPClassifier,
    InputNorm,
    Segmenter,
    SegmenterConfig,
    build_segmenter,
    parse_init,
)
from udabench.models.discriminator import Discriminator

__all__ = [
    "ASPPClassifier", "BN_MODES", "Discriminator", "InputNorm", "NORMALISATIONS", "ResNetBackbone",
    "Segmenter", "SegmenterConfig", "apply_caffe_geometry", "build_segmenter", "parse_init",
]
