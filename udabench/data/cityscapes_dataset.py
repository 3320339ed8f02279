"""Cityscapes (Cordts et al. 2016): the target of the classic protocols; ``gtFine`` labelIds,
one folder per city, a label-free training split and the 500-image validation split."""
from __future__ import annotations

from pathlib import Path

from udabench import taxonomy
from udabench.data.registry import register_dataset
from udabench.data.spec import DatasetSpec, FilePattern


@register_dataset
class Cityscapes(DatasetSpec):
    """Cityscapes: 2,975 train / 500 val street scenes, gtFine labelIds per city."""

    name = "cityscapes"
    title = "Cityscapes"
    url = "https://www.cityscapes-dataset.com (account required)"
    nominal_size = (2048, 1024)
    images = FilePattern("leftImg8bit/{split}/*/{id}_leftImg8bit.png")
    labels = FilePattern("gtFine/{split}/*/{id}_gtFine_labelIds.png")
    splits = ("train", "val")
    eval_splits = ("val",)
    unlabelled_splits = ("train",)
    example_id = "<stem>"
    wildcard_names = ("<city>",)
    label_encoding = "8-bit labelIds"
    lut = taxonomy.LABEL_ID_TO_TRAIN_ID
    max_label_value = 33

    def encoding_message(self, path: Path, found: str) -> str:
        return (f"Cityscapes label {path} is {found}; expected an 8-bit single-channel "
                f"*_gtFine_labelIds.png (not *_gtFine_color.png); re-extract the original files")
