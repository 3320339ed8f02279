"""MIC's masked image consistency (Hoyer et al., CVPR 2023; lhoyer/MIC ``seg/mmseg/models/utils/
masking_transforms.py`` and ``uda/masking_consistency_module.py``).

Block mask: per image a grid of round(H/b) x round(W/b) uniform numbers, a block *kept* where its
number exceeds the mask ratio (each block is masked with probability 0.7; the masked share is not
exact), upsampled (nearest) to H x W. The published code multiplies the *normalised* image by the
mask, so masked pixels become 0 = the normalisation's mean colour; here images are in [0, 1] before
the segmenter normalises them, so masked pixels are set to that mean colour (``fill``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from udabench.methodkit.mean_teacher import weighted_ce


def block_mask(batch: int, height: int, width: int, block: int, ratio: float,
               gen: torch.Generator) -> torch.Tensor:
    """float [B, 1, H, W]: 1 where the image is kept, 0 where it is masked."""
    grid = (batch, 1, max(1, round(height / block)), max(1, round(width / block)))
    keep = (torch.rand(grid, generator=gen) > ratio).float()
    return F.interpolate(keep, size=(height, width), mode="nearest")


def block_size(block_at_reference: int, height: int, reference_height: int) -> int:
    """MIC's rule "half the patch size at half resolution": a block published for
    ``reference_height``-pixel crops, at another training height (at least 1 pixel)."""
    return max(1, round(block_at_reference * height / reference_height))


def input_mean(segmenter: nn.Module) -> torch.Tensor | None:
    """The [0, 1] RGB colour the segmenter's input normalisation maps to 0 (its mean), or None
    when the network normalises nothing it declares (masked pixels are then 0)."""
    norm = getattr(segmenter, "normalize", None)
    mean = getattr(norm, "mean", None)
    if mean is None:
        return None
    mean = mean.reshape(3).float() / float(getattr(norm, "scale", 1.0))
    return mean.flip(0) if getattr(norm, "bgr", False) else mean


def mask_images(images: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor | None) -> torch.Tensor:
    """Masked pixels of float [B, 3, H, W] images set to ``fill`` (RGB) or 0."""
    mask = mask.to(images.device, images.dtype)
    if fill is None:
        return images * mask
    return images * mask + fill.to(images.device, images.dtype).view(1, 3, 1, 1) * (1 - mask)


def masked_consistency_loss(forward, images: torch.Tensor, labels: torch.Tensor,
                            weight: torch.Tensor, gen: torch.Generator, *, block: int,
                            ratio: float, fill: torch.Tensor | None, augment=None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """MIC's 'separatetrgaug' term: the target images (float [0, 1]), colour-jittered and
    blurred by ``augment(images, gen)`` when given, block-masked, through the student
    (``forward(images)`` -> logits), against the teacher's pseudo-labels and weights of the
    unmasked images; CE x weight averaged over all pixels. Returns (loss, the mask)."""
    if augment is not None:
        images = augment(images, gen)
    b, _, h, w = images.shape
    mask = block_mask(b, h, w, block, ratio, gen).to(images.device)
    loss = weighted_ce(forward(mask_images(images, mask, fill)), labels, weight)
    return loss, mask
