"""DAFormer's rare class sampling (Hoyer et al., CVPR 2022; lhoyer/DAFormer
``mmseg/datasets/uda_dataset.py`` and ``tools/convert_datasets/gta.py``).

From per-image class pixel counts of the source labels at full resolution (udabench: the
manifest ``udabench data prepare`` writes, ``SegmentationDataset.class_counts()``):

- f_c = the share of class c among all labelled source pixels (classes with no pixel at all are
  left out, as the official statistics never list them);
- P(c) = softmax_c((1 - f_c) / T), T = 0.01;
- a source sample: draw c ~ P, then an image uniformly among those with > ``min_pixels`` (3000)
  pixels of c; then up to 10 re-crops until the crop holds > ``min_pixels x min_crop_ratio``
  (1500) pixels of c (the method's crop, udabench.methodkit.crops.crop_source). Every sample is
  an independent draw (with replacement); the target image is drawn uniformly.

The official code stops (an assertion) when a class has pixels but no image above
``min_pixels``; here such a class is left out and P is renormalised over the others
(``RareClassSampler.dropped`` names them), which is the softmax over the remaining classes.
"""
from __future__ import annotations

from typing import Any

import torch


def rcs_class_probs(class_counts: torch.Tensor, temperature: float) -> torch.Tensor:
    """P(c) [C] float64 from [N, C] per-image pixel counts; 0 for classes without any pixel."""
    totals = torch.as_tensor(class_counts, dtype=torch.float64).sum(0)
    present = totals > 0
    freq = totals[present] / totals[present].sum()
    probs = torch.zeros_like(totals)
    probs[present] = torch.softmax((1.0 - freq) / temperature, dim=0)
    return probs


class RareClassSampler:
    """Which source images RCS loads, and how often (see the module docstring)."""

    def __init__(self, class_counts: torch.Tensor, temperature: float = 0.01,
                 min_pixels: int = 3000, min_crop_ratio: float = 0.5):
        counts = torch.as_tensor(class_counts, dtype=torch.int64)
        if counts.dim() != 2 or counts.shape[0] == 0:
            raise ValueError(f"class counts must be [images, classes], got {list(counts.shape)}")
        self.num_images, self.num_classes = counts.shape
        self.temperature, self.min_pixels, self.min_crop_ratio = temperature, min_pixels, min_crop_ratio
        probs = rcs_class_probs(counts, temperature)
        self.candidates: dict[int, torch.Tensor] = {}
        self.dropped: list[int] = []
        for c in range(self.num_classes):
            if probs[c] <= 0:
                continue
            images = torch.nonzero(counts[:, c] > min_pixels).flatten()
            if images.numel():
                self.candidates[c] = images
            else:
                self.dropped.append(c)
                probs[c] = 0.0
        if not self.candidates:
            raise ValueError(f"no source image has more than {min_pixels} pixels of any class")
        self.class_probs = probs / probs.sum()

    @property
    def min_crop_pixels(self) -> float:
        return self.min_pixels * self.min_crop_ratio

    def image_weights(self) -> torch.Tensor:
        """[N] float64: the probability that one draw loads image i,
        sum_c P(c) [i has > min_pixels of c] / #images with > min_pixels of c."""
        w = torch.zeros(self.num_images, dtype=torch.float64)
        for c, images in self.candidates.items():
            w[images] += self.class_probs[c] / images.numel()
        return w

    def draw(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n independent draws: (image indices [n], the class each was drawn for [n])."""
        classes = torch.multinomial(self.class_probs, n, replacement=True, generator=gen)
        u = torch.rand(n, generator=gen, dtype=torch.float64)
        indices = torch.empty(n, dtype=torch.int64)
        for k, c in enumerate(classes.tolist()):
            images = self.candidates[c]
            indices[k] = images[min(int(u[k] * images.numel()), images.numel() - 1)]
        return indices, classes

    def crop_has_class(self, label: torch.Tensor, c: int) -> bool:
        return int((label == c).sum()) > self.min_crop_pixels

    def state(self) -> dict[str, Any]:
        """What the sampler was built from (recorded, and compared on resume)."""
        return {"temperature": self.temperature, "min_pixels": self.min_pixels,
                "min_crop_ratio": self.min_crop_ratio, "dropped": list(self.dropped),
                "class_probs": [round(float(p), 12) for p in self.class_probs]}

