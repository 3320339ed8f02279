"""Joint image/label transforms on tensors (CPU or GPU, one sample [C,H,W] or a batch [B,C,H,W]).

Sizes here are (H, W), the torch order. Images are uint8 RGB; labels uint8 trainIds (255 = ignore).
Every random draw comes from the ``torch.Generator`` passed in, which the loaders seed from
(run seed, domain, epoch, position), so augmentation is the same whatever the worker count.

The training transform never resizes a whole image to throw most of it away: it draws the crop
window in the resized frame, maps it back to the original image and resizes only that region
(the same region for image and label, so they stay aligned with each other; the window lies
within half a source pixel of where a full resize-then-crop would put it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from udabench.taxonomy import IGNORE

_MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def resize_image(image: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear",
                 antialias: bool = True) -> torch.Tensor:
    """Resize [..., C, H, W] to ``size`` (H, W) with bilinear/bicubic, antialiased when shrinking."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    if interpolation not in _MODES:
        raise ValueError(f"interpolation must be one of {', '.join(_MODES)}, got '{interpolation}'")
    return TF.resize(image, list(size), interpolation=_MODES[interpolation], antialias=antialias)


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of [..., H, W] labels, pixel-centre aligned (like PIL NEAREST).

    Indexing instead of interpolation keeps uint8 ids exact on any device.
    """
    h, w = label.shape[-2:]
    if (h, w) == tuple(size):
        return label
    dev = label.device
    rows = ((torch.arange(size[0], device=dev, dtype=torch.float64) + 0.5) * (h / size[0])).long()
    cols = ((torch.arange(size[1], device=dev, dtype=torch.float64) + 0.5) * (w / size[1])).long()
    return label.index_select(-2, rows.clamp_(max=h - 1)).index_select(-1, cols.clamp_(max=w - 1))


def hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def pad_to(x: torch.Tensor, size: tuple[int, int], value: int) -> torch.Tensor:
    """Pad [..., H, W] at the bottom and right up to ``size`` with ``value``."""
    ph, pw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    if ph <= 0 and pw <= 0:
        return x
    out = x.new_full((*x.shape[:-2], max(size[0], x.shape[-2]), max(size[1], x.shape[-1])), value)
    out[..., : x.shape[-2], : x.shape[-1]] = x
    return out


def _uniform(gen: torch.Generator, lo: float, hi: float, n: int | None = None) -> Any:
    r = torch.rand(n or 1, generator=gen, dtype=torch.float64)
    r = lo + (hi - lo) * r
    return r if n is not None else float(r)


def _randint(gen: torch.Generator, high: int) -> int:
    """Uniform in [0, high]."""
    return int(torch.randint(0, high + 1, (1,), generator=gen))


@dataclass(frozen=True)
class PhotometricJitter:
    """Colour jitter for methods that want it: factors drawn per image from ``[1-x, 1+x]``.

    Works on uint8 [3,H,W] or [B,3,H,W], on any device (factors are drawn on the CPU generator).
    """

    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.0  # in [0, 0.5]; applied per image (slower), off by default
    p: float = 1.0  # probability of jittering each image

    def __call__(self, image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        batched = image.ndim == 4
        x = image if batched else image.unsqueeze(0)
        n = x.shape[0]
        apply = torch.rand(n, generator=gen, dtype=torch.float64) < self.p
        b = _uniform(gen, 1 - self.brightness, 1 + self.brightness, n)
        c = _uniform(gen, 1 - self.contrast, 1 + self.contrast, n)
        s = _uniform(gen, 1 - self.saturation, 1 + self.saturation, n)
        h = _uniform(gen, -self.hue, self.hue, n)
        one = torch.ones(n, dtype=torch.float64)
        b, c, s = (torch.where(apply, v, one).to(x.device, torch.float32).view(n, 1, 1, 1)
                   for v in (b, c, s))
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        y = x.float() * b
        mean = (y * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        y = ((y - mean) * c + mean).clamp_(0, 255)
        gray = (y * weights).sum(1, keepdim=True)
        y = ((y - gray) * s + gray).clamp_(0, 255).round_().to(torch.uint8)
        if self.hue > 0:
            y = torch.stack([TF.adjust_hue(img, float(f)) if a else img
                             for img, f, a in zip(y, h, apply)])
        return y if batched else y[0]


@dataclass(frozen=True)
class TrainTransform:
    """Resize (+ random scale), random crop, horizontal flip, optional jitter; records ``geometry``.

    ``size``: (H, W) the image is resized to before scaling (None = keep); ``scale_range``: random
    factor on that size (None = off); ``crop``: (H, W) window (None = the whole image, the classic
    recipe); images are padded with 0 and labels with 255 where the window leaves the image.
    """

    size: tuple[int, int] | None = None
    scale_range: tuple[float, float] | None = None
    crop: tuple[int, int] | None = None
    flip_p: float = 0.5
    interpolation: str = "bilinear"
    jitter: PhotometricJitter | None = None
    label_pixels_only: ClassVar[bool] = True  # labels only move or pad with 255: ids map afterwards

    def params(self, image_hw: tuple[int, int], gen: torch.Generator) -> dict[str, Any]:
        """Draw the geometry for one image of size ``image_hw`` (fixed order of draws)."""
        base = self.size or image_hw
        factor = _uniform(gen, *self.scale_range) if self.scale_range else 1.0
        full = (max(1, round(base[0] * factor)), max(1, round(base[1] * factor)))
        if self.crop is None:
            crop = (0, 0, full[0], full[1])
        else:
            ch, cw = self.crop
            crop = (_randint(gen, max(full[0] - ch, 0)), _randint(gen, max(full[1] - cw, 0)), ch, cw)
        flip = bool(torch.rand(1, generator=gen, dtype=torch.float64) < self.flip_p)
        return {"full_size": full, "crop": crop, "flip": flip}

    def __call__(self, sample: dict[str, Any], gen: torch.Generator) -> dict[str, Any]:
        image: torch.Tensor = sample["image"]
        h0, w0 = image.shape[-2:]
        geo = self.params((h0, w0), gen)
        (hf, wf), (top, left, ch, cw) = geo["full_size"], geo["crop"]
        vh, vw = min(ch, hf - top), min(cw, wf - left)  # the part of the window inside the image
        sy, sx = h0 / hf, w0 / wf
        # Rounded source bounds: the region sits within half a source pixel of the exact window.
        y0, x0 = min(h0 - 1, round(top * sy)), min(w0 - 1, round(left * sx))
        y1 = max(y0 + 1, min(h0, round((top + vh) * sy)))
        x1 = max(x0 + 1, min(w0, round((left + vw) * sx)))
        out = dict(sample)
        img = resize_image(image[..., y0:y1, x0:x1], (vh, vw), self.interpolation)
        img = pad_to(img, (ch, cw), 0)
        if "label" in sample:
            lab = resize_label(sample["label"][..., y0:y1, x0:x1], (vh, vw))
            lab = pad_to(lab, (ch, cw), IGNORE)
            out["label"] = hflip(lab) if geo["flip"] else lab.contiguous()
        img = hflip(img) if geo["flip"] else img.contiguous()
        if self.jitter is not None:
            img = self.jitter(img, gen)
        out["image"] = img
        out["geometry"] = geo
        return out


@dataclass(frozen=True)
class ResizeImage:
    """Evaluation: resize the image to the input size (H, W); the label stays at its own size
    (the evaluator upsamples logits to it, even when it differs from the image's size)."""

    size: tuple[int, int]
    interpolation: str = "bilinear"
    label_pixels_only: ClassVar[bool] = True
    keeps_label_size: ClassVar[bool] = True  # labels of scored splits are never resized

    def __call__(self, sample: dict[str, Any], gen: torch.Generator | None = None) -> dict[str, Any]:
        out = dict(sample)
        out["image"] = resize_image(sample["image"], self.size, self.interpolation).contiguous()
        return out


def reference_train_transform(sample: dict[str, Any], t: TrainTransform,
                              geo: dict[str, Any]) -> dict[str, Any]:
    """Resize the whole image, then crop and flip: the slow, obvious order (for tests and bench)."""
    (hf, wf), (top, left, ch, cw) = geo["full_size"], geo["crop"]
    img = pad_to(resize_image(sample["image"], (hf, wf), t.interpolation), (top + ch, left + cw), 0)
    img = img[..., top: top + ch, left: left + cw]
    out = dict(sample, image=hflip(img) if geo["flip"] else img)
    if "label" in sample:
        lab = pad_to(resize_label(sample["label"], (hf, wf)), (top + ch, left + cw), IGNORE)
        lab = lab[..., top: top + ch, left: left + cw]
        out["label"] = hflip(lab) if geo["flip"] else lab
    return out
