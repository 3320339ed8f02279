"""Training crops and flips a method applies to its batches (the DACS family trains on 512x512
random crops of both domains, whatever the benchmark's resize).

- DACS (``data/augmentations.py RandomCrop_gta/RandomCrop_city``): a uniformly placed crop.
- DAFormer (mmseg ``RandomCrop(cat_max_ratio=0.75)`` on the source): the crop is drawn again, at
  most 10 times (the last one kept unchecked), until no single class covers >= 75% of its
  labelled pixels and it holds at least two classes; then ``RandomFlip(0.5)`` on both domains.
- With rare class sampling, the crop of a source image drawn for class c is redone (whole crop
  rule included) at most 10 times until it holds more than ``min_crop_pixels`` of c.

A side no longer than the crop is kept whole (no padding): MiniCity's small batches pass as they
are. Offsets and flips come from the method's per-step generator (exact resume).
"""
from __future__ import annotations

import torch

IGNORE = 255
TRIES = 10  # mmseg RandomCrop and DAFormer's RCS loop both re-draw at most 10 times


def crop_box(height: int, width: int, size: tuple[int, int], gen: torch.Generator
             ) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a uniformly placed crop (randint(0, margin) on each side)."""
    ch, cw = min(size[0], height), min(size[1], width)
    top = int(torch.randint(0, height - ch + 1, (1,), generator=gen))
    left = int(torch.randint(0, width - cw + 1, (1,), generator=gen))
    return top, left, ch, cw


def _cut(x: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    top, left, h, w = box
    return x[..., top:top + h, left:left + w]


def category_ratio_ok(label: torch.Tensor, cat_max_ratio: float) -> bool:
    """mmseg: at least two labelled classes, the largest under ``cat_max_ratio`` of them."""
    _, counts = torch.unique(label[label != IGNORE], return_counts=True)
    return counts.numel() > 1 and float(counts.max()) / float(counts.sum()) < cat_max_ratio


def label_crop_box(label: torch.Tensor, size: tuple[int, int], gen: torch.Generator,
                   cat_max_ratio: float = 1.0) -> tuple[int, int, int, int]:
    """A crop box of a labelled image, re-drawn for ``cat_max_ratio`` < 1 as mmseg does."""
    h, w = label.shape[-2:]
    box = crop_box(h, w, size, gen)
    if cat_max_ratio < 1.0:
        for _ in range(TRIES):
            if category_ratio_ok(_cut(label, box), cat_max_ratio):
                break
            box = crop_box(h, w, size, gen)
    return box


def crop_source(images: torch.Tensor, labels: torch.Tensor, size: tuple[int, int],
                gen: torch.Generator, cat_max_ratio: float = 1.0,
                rcs_classes: torch.Tensor | None = None, min_crop_pixels: float = 0.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image a crop of the labelled source batch; ``rcs_classes`` [B] (the class each image
    was drawn for) re-crops until the crop holds > ``min_crop_pixels`` of it (DAFormer's RCS)."""
    out_i, out_l = [], []
    for i in range(images.shape[0]):
        box = label_crop_box(labels[i], size, gen, cat_max_ratio)
        if rcs_classes is not None and min_crop_pixels > 0:
            c = int(rcs_classes[i])
            for _ in range(TRIES):
                if int((_cut(labels[i], box) == c).sum()) > min_crop_pixels:
                    break
                box = label_crop_box(labels[i], size, gen, cat_max_ratio)
        out_i.append(_cut(images[i], box))
        out_l.append(_cut(labels[i], box))
    return torch.stack(out_i), torch.stack(out_l)


def crop_images(images: torch.Tensor, size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """Per image a uniformly placed crop of an unlabelled batch."""
    h, w = images.shape[-2:]
    return torch.stack([_cut(img, crop_box(h, w, size, gen)) for img in images])


def random_flip(images: torch.Tensor, labels: torch.Tensor | None, p: float, gen: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each image (and its label) mirrored left-right with probability ``p``."""
    if p <= 0:
        return images, labels
    flip = torch.rand(images.shape[0], generator=gen) < p
    if not bool(flip.any()):
        return images, labels
    sel = flip.to(images.device)
    images = torch.where(sel.view(-1, 1, 1, 1), images.flip(-1), images)
    if labels is not None:
        labels = torch.where(sel.view(-1, 1, 1), labels.flip(-1), labels)
    return images, labels
