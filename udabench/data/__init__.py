"""Datasets, transforms and loaders. Datasets are registered descriptors
(``udabench.data.registry``): the built-in ones (GTA5, SYNTHIA-RAND-CITYSCAPES, Cityscapes) are
imported here, which registers them; plug-ins register through the ``udabench.datasets`` entry
points. Importing this package does not import torch: the descriptors decode labels lazily and the
torch-based pieces (datasets, loaders, transforms) load on first use, so that listing commands
(``udabench runs``, ``leaderboard``) that only need a benchmark's spec stay fast."""
from __future__ import annotations

from importlib import import_module
from typing import Any

from udabench.data import cityscapes_dataset, gta5_dataset, synthia_dataset  # noqa: F401 (register)
from udabench.data.registry import DATASETS, dataset_names, get_dataset, register_dataset
from udabench.data.spec import DatasetSpec, FilePattern, lookup_table

_LAZY = {
    "SegmentationDataset": "udabench.data.datasets", "build_dataset": "udabench.data.datasets",
    "cityscapes": "udabench.data.datasets", "decode_label": "udabench.data.datasets",
    "gta5": "udabench.data.datasets", "synthia": "udabench.data.datasets",
    "InfiniteLoader": "udabench.data.loaders", "collate": "udabench.data.loaders",
    "PhotometricJitter": "udabench.data.transforms", "ResizeImage": "udabench.data.transforms",
    "TrainTransform": "udabench.data.transforms",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'udabench.data' has no attribute '{name}'")


__all__ = ["DATASETS", "DatasetSpec", "FilePattern", "dataset_names", "get_dataset",
           "lookup_table", "register_dataset", *_LAZY]
