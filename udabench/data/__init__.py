"""Datasets, transforms and loaders. Datasets are registered descriptors
(``udabench.data.registry``): the built-in ones (GTA5, SYNTHIA-RAND-CITYSCAPES, Cityscapes) are
imported here, which registers them; plug-ins register through the ``udabench.datasets`` entry
points."""
from udabench.data import cityscapes_dataset, gta5_dataset, synthia_dataset  # noqa: F401 (register)
from udabench.data.datasets import (
    SegmentationDataset,
    build_dataset,
    cityscapes,
    decode_label,
    gta5,
    synthia,
)
from udabench.data.loaders import InfiniteLoader, collate
from udabench.data.registry import DATASETS, dataset_names, get_dataset, register_dataset
from udabench.data.spec import DatasetSpec, FilePattern, lookup_table
from udabench.data.transforms import PhotometricJitter, ResizeImage, TrainTransform

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "FilePattern",
    "InfiniteLoader",
    "PhotometricJitter",
    "ResizeImage",
    "SegmentationDataset",
    "TrainTransform",
    "build_dataset",
    "cityscapes",
    "collate",
    "dataset_names",
    "decode_label",
    "get_dataset",
    "gta5",
    "lookup_table",
    "register_dataset",
    "synthia",
]
