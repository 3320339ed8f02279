"""example-acdc: ACDC (Sakaridis et al., ICCV 2021), driving scenes in fog, night, rain and snow
with Cityscapes labelIds, as a udabench dataset (a worked example, docs/extending.md).

Expected below the data root, as the archives unpack (``rgb_anon_trainvaltest`` and
``gt_trainval``)::

    acdc/rgb_anon/<condition>/{train,val}/<sequence>/<frame>_rgb_anon.png
    acdc/gt/<condition>/{train,val}/<sequence>/<frame>_gt_labelIds.png

The ``*_ref`` folders (reference images of the same places in good weather) and the test split
(no public labels) are not part of it. Registered as ``example-acdc`` so that it never collides
with a dataset udabench may ship itself.
"""
from __future__ import annotations

from udabench import taxonomy
from udabench.data import DatasetSpec, FilePattern, register_dataset


@register_dataset
class ACDC(DatasetSpec):
    """ACDC: adverse-condition driving scenes (fog, night, rain, snow), Cityscapes labelIds."""

    name = "example-acdc"
    folder = "acdc"  # below the data root
    title = "ACDC"
    url = "https://acdc.vision.ee.ethz.ch (registration required)"
    nominal_size = (1920, 1080)
    images = FilePattern("rgb_anon/*/{split}/*/{id}_rgb_anon.png")
    labels = FilePattern("gt/*/{split}/*/{id}_gt_labelIds.png")
    splits = ("train", "val")
    eval_splits = ("val",)
    unlabelled_splits = ("train",)  # as a UDA target, its training split is served without labels
    wildcard_names = ("<condition>", "<sequence>")
    example_id = "<frame>"
    label_encoding = "8-bit Cityscapes labelIds"
    lut = taxonomy.LABEL_ID_TO_TRAIN_ID
    max_label_value = 33
