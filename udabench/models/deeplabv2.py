"""DeepLabV2 = a dilated ResNet backbone (output stride 8) + the ASPP-sum head ("aspp").

The segmenter is no longer DeepLabV2-specific (udabench/models/segmenter.py builds any registered
backbone + head); the names below stay importable from here.
"""
from udabench.models.heads import ASPP_DILATIONS, ASPPClassifier
from udabench.models.normalisation import NORMALISATIONS, InputNorm
from udabench.models.segmenter import (
    BN_MODES,
    IMAGENET_TAG,
    INIT_FORMS,
    Segmenter,
    SegmenterConfig,
    build_segmenter,
    parse_init,
)

__all__ = ["ASPP_DILATIONS", "ASPPClassifier", "BN_MODES", "IMAGENET_TAG", "INIT_FORMS",
           "InputNorm", "NORMALISATIONS", "Segmenter", "SegmenterConfig", "build_segmenter",
           "parse_init"]
