"""Datasets, transforms and loaders for the source (GTA5, SYNTHIA) and target (Cityscapes) domains."""
from udabench.data.datasets import (
    SegmentationDataset,
    build_dataset,
    cityscapes,
    decode_label,
    gta5,
    synthia,
)
from udabench.data.loaders import InfiniteLoader, collate
from udabench.data.transforms import PhotometricJitter, ResizeImage, TrainTransform

__all__ = [
    "InfiniteLoader",
    "PhotometricJitter",
    "ResizeImage",
    "SegmentationDataset",
    "TrainTransform",
    "build_dataset",
    "cityscapes",
    "collate",
    "decode_label",
    "gta5",
    "synthia",
]
