"""ClassMix and the strong augmentation of DACS-style self-training (DACS, DAFormer, MIC).

Everything random here draws from a ``torch.Generator`` the method seeds per step from the run
(``hash_seed``), so a resumed run repeats the exact masks, colour jitter and blur.

ClassMix (DACS, ``trainUDA.py`` + ``utils/transformmasks.py``): for source image i, ceil(n/2) of
the n classes present (255 included: the official filter line is commented out) are chosen
without replacement; the mask is the pixels of those classes in image i's own label. DAFormer
(``mmseg/models/utils/dacs_transforms.py get_class_masks``) draws from ``torch.unique`` of the
*whole source batch* instead (``pool = "batch"``), still masking each image's own label.

Colour jitter as published = kornia 0.4/0.5 ``ColorJitter(s, s, s, s)`` (the versions both repos
ran; DAFormer pins kornia 0.5.8): brightness is *additive* (x + U(-s, s)), contrast
*multiplicative* (x U(1-s, 1+s)), saturation scales HSV's S by U(1-s, 1+s), hue shifts HSV's H by
U(-s, s) of a turn, each clamped to [0, 1], in one random order per call. ``ops = "torchvision"``
is the PIL-style jitter of torchvision (and of kornia >= 0.6) instead. Gaussian blur: sigma
U(0.15, 1.15), kernel the odd number nearest 10% of each side (51 for 512), reflect padding.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torchvision.transforms.v2 import functional as TF

IGNORE = 255


def unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1] (the scaling ``Method.segment`` applies); floats pass."""
    return images.float().div(255.0) if images.dtype == torch.uint8 else images


def _uniform(gen: torch.Generator, low: float, high: float, n: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)


# -- ClassMix ------------------------------------------------------------------------------------
def choose_classes(present: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """ceil(n/2) of the n ``present`` classes, without replacement (``int((n + n % 2) / 2)``)."""
    n = int(present.numel())
    k = (n + n % 2) // 2
    order = torch.randperm(n, generator=gen)[:k]
    return present.cpu()[order]


def class_mix_masks(labels: torch.Tensor, gen: torch.Generator,
                    pool: Literal["image", "batch"] = "image") -> torch.Tensor:
    """bool [B, H, W]: True where image i's source label is one of the classes drawn for it.

    ``pool = "image"``: classes drawn from image i's own label (DACS); ``"batch"``: from every
    label of the batch (DAFormer), so a drawn class may be absent from image i."""
    labels_cpu = labels.cpu()
    batch_classes = torch.unique(labels_cpu)
    masks = []
    for label in labels_cpu:
        present = torch.unique(label) if pool == "image" else batch_classes
        chosen = choose_classes(present, gen)
        masks.append(torch.isin(label, chosen))
    return torch.stack(masks).to(labels.device)


def mix(mask: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mask * source + (1 - mask) * target, for images [B, C, H, W] or maps [B, H, W]."""
    m = mask if source.dim() == mask.dim() else mask.unsqueeze(1)
    return torch.where(m, source, target)


# -- colour jitter ---------------------------------------------------------------------------------
def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """[.., 3, H, W] RGB in [0, 1] -> HSV with H in [0, 1) turns (the standard hexcone model)."""
    r, g, b = rgb.unbind(-3)
    maxc, argmax = rgb.max(-3)
    minc = rgb.min(-3).values
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.stack([(g - b) / safe, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe], -3)
    h = h.gather(-3, argmax.unsqueeze(-3)).squeeze(-3)
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], -3)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(hsv)
    for k, (rr, gg, bb) in enumerate(table):
        sel = (i == k).unsqueeze(-3)
        out = torch.where(sel, torch.stack([rr, gg, bb], -3), out)
    return out


def _published_op(img: torch.Tensor, op: int, factor: float) -> torch.Tensor:
    """kornia 0.5 apply_adjust_*: brightness additive (factor - 1), contrast x factor (which is
    torchvision's brightness), saturation x factor on HSV's S, hue + factor turns."""
    if op == 0:
        return (img + (factor - 1.0)).clamp(0.0, 1.0)
    if op == 1:
        return TF.adjust_brightness(img, factor)
    if op == 2:
        hsv = rgb_to_hsv(img)
        hsv = torch.stack([hsv[..., 0, :, :], (hsv[..., 1, :, :] * factor).clamp(0, 1),
                           hsv[..., 2, :, :]], -3)
        return hsv_to_rgb(hsv)
    return TF.adjust_hue(img, factor)


_TORCHVISION_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def jitter_params(batch: int, strength: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Per image: brightness, contrast, saturation factors U(1-s, 1+s), hue U(-s, s); one order
    of the four operations for the call (kornia's ``random_color_jitter_generator``)."""
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    return {"factors": torch.stack([_uniform(gen, lo, hi, batch), _uniform(gen, lo, hi, batch),
                                    _uniform(gen, lo, hi, batch),
                                    _uniform(gen, -min(strength, 0.5), min(strength, 0.5), batch)], 1),
            "order": torch.randperm(4, generator=gen)}


def color_jitter(images: torch.Tensor, params: dict[str, torch.Tensor],
                 ops: Literal["published", "torchvision"] = "published") -> torch.Tensor:
    """Jitter float [B, 3, H, W] images in [0, 1] with ``jitter_params``."""
    out = []
    for img, factors in zip(images, params["factors"].tolist()):
        for op in params["order"].tolist():
            img = (_published_op(img, op, factors[op]) if ops == "published"
                   else _TORCHVISION_OPS[op](img, factors[op]))
        out.append(img)
    return torch.stack(out)


# -- Gaussian blur ---------------------------------------------------------------------------------
def blur_kernel_size(side: int) -> int:
    """DACS: int(floor(ceil(0.1 n) - 0.5 + ceil(0.1 n) % 2)), the odd size nearest 10% of n."""
    c = math.ceil(0.1 * side)
    return math.floor(c - 0.5 + c % 2)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """kornia GaussianBlur2d((ky, kx), (sigma, sigma)) with reflect padding, via torchvision."""
    ky, kx = blur_kernel_size(images.shape[-2]), blur_kernel_size(images.shape[-1])
    return TF.gaussian_blur(images, kernel_size=[kx, ky], sigma=[sigma, sigma])


# -- DACS's strong transform -------------------------------------------------------------------------
def strong_augment(images: torch.Tensor, gen: torch.Generator, *, jitter_strength: float,
                   jitter_threshold: float = 0.2, blur: bool = True, per_image: bool = True,
                   ops: Literal["published", "torchvision"] = "published") -> torch.Tensor:
    """Colour jitter, then Gaussian blur, of float [B, 3, H, W] images in [0, 1].

    As the published code: one U(0,1) draw per batch decides jitter (applied when it exceeds
    ``jitter_threshold``, i.e. with probability 0.8 at 0.2) and one decides blur (when > 0.5).
    ``per_image``: DACS/DAFormer transform each mixed image in its own call, so each image gets
    its own jitter order and blur sigma; MIC transforms the whole target batch in one call (one
    order, one sigma, per-image jitter factors)."""
    do_jitter = float(torch.rand(1, generator=gen)) > jitter_threshold
    do_blur = blur and float(torch.rand(1, generator=gen)) > 0.5
    groups = [images[i:i + 1] for i in range(images.shape[0])] if per_image else [images]
    out = []
    for group in groups:
        if do_jitter:
            group = color_jitter(group, jitter_params(group.shape[0], jitter_strength, gen), ops)
        if do_blur:
            group = gaussian_blur(group, float(_uniform(gen, 0.15, 1.15)))
        out.append(group)
    return torch.cat(out)


def class_mix_batch(masks: torch.Tensor, source: dict, target_images: torch.Tensor,
                    pseudo_labels: torch.Tensor, pseudo_weight: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mixed images float [0, 1], mixed labels, pixel weights): where the mask is set, the source
    image, its label (255 kept) and weight 1; elsewhere the target image, the teacher's
    pseudo-label and its weight. Source and target batches must be of one size (DACS and
    DAFormer train on 512x512 crops of both)."""
    src, tgt = source["image"], target_images
    if src.shape != tgt.shape:
        raise ValueError(f"ClassMix needs source and target batches of one shape, got "
                         f"{list(src.shape)} and {list(tgt.shape)}")
    images = mix(masks, unit_float(src), unit_float(tgt))
    labels = mix(masks, source["label"].to(torch.uint8), pseudo_labels.to(torch.uint8))
    weight = mix(masks, torch.ones_like(pseudo_weight), pseudo_weight)
    return images, labels, weight
