"""The shared machinery of the DACS family (DACS, DAFormer, MIC on either): a mix-in for a Method
whose config declares the ClassMix, augmentation, teacher and MIC settings (see methods/dacs.py).

It owns nothing a method's paper does not say: the per-step random generator (seeded from the
run, so resume is exact), the strong augmentation, ClassMix and its loss, MIC's masked loss, the
EMA update after each optimiser step, and which network is evaluated.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from udabench.seeding import sample_seed
from udabench.errors import UserError
from udabench.methodkit.crops import crop_images, crop_source, random_flip
from udabench.methodkit.masking import block_size, input_mean, masked_consistency_loss
from udabench.methodkit.mean_teacher import ema_update_parameters, weighted_ce
from udabench.methodkit.mixing import class_mix_batch, class_mix_masks, strong_augment, unit_float
from udabench.methodkit.teacher import ema_alpha, ema_update, make_teacher


class ClassMixTeacher:
    """Mix-in (put before ``Method``). Expects ``self.cfg`` with: crop, crop_size, crop_cat_max_ratio,
    flip_p, ema_momentum, mix_classes, jitter_strength, jitter_threshold, jitter_ops, blur,
    teacher_mode, eval_network, mic_block, mic_ratio, mic_augment, reference_height; sets
    ``self.teacher``; ``self.sampler`` (rare class sampling) may be set by the method."""

    #: added to the optimiser step for the EMA warm-up index: DACS updates after step t with
    #: alpha(t); DAFormer updates at the start of step t+1 with alpha(t+1).
    ema_offset: ClassVar[int] = 0
    cfg: Any
    ctx: Any
    segmenter: nn.Module

    def init_teacher(self) -> None:
        self.teacher = make_teacher(self.segmenter)
        self._micro = 0

    def step_generator(self, step: int) -> torch.Generator:
        """The step's random numbers (masks, jitter, blur), from (run seed, method, rank, step,
        micro-batch): a resumed run draws exactly what the uninterrupted one did."""
        seed = sample_seed(self.ctx.seed, type(self).__name__, self.ctx.rank, step, self._micro)
        self._micro += 1
        return torch.Generator().manual_seed(seed)

    def augment(self, images: torch.Tensor, gen: torch.Generator, per_image: bool = True) -> torch.Tensor:
        c = self.cfg
        return strong_augment(images, gen, jitter_strength=c.jitter_strength,
                              jitter_threshold=c.jitter_threshold, blur=c.blur,
                              per_image=per_image, ops=c.jitter_ops)

    def prepare_batches(self, source: dict, target: dict, gen: torch.Generator) -> tuple[dict, dict]:
        """The method's training crops and flips of both batches (the target's label is never
        read: only its image is kept)."""
        c = self.cfg
        sampler = getattr(self, "sampler", None)
        rcs = source.get("sampled_class") if sampler is not None else None
        if sampler is not None and rcs is None:
            raise UserError(f"{c.WHERE}.rcs: the source batch does not say which class each image "
                            "was drawn for ('sampled_class'): the trainer ignored the method's "
                            "source_sampler")
        images, labels, target_images = source["image"], source["label"], target["image"]
        if c.crop:
            size = tuple(c.crop_size)
            images, labels = crop_source(images, labels, size, gen, c.crop_cat_max_ratio, rcs,
                                         sampler.min_crop_pixels if sampler is not None else 0.0)
            target_images = crop_images(target_images, size, gen)
        images, labels = random_flip(images, labels, c.flip_p, gen)
        target_images, _ = random_flip(target_images, None, c.flip_p, gen)
        return {"image": images, "label": labels}, {"image": target_images}

    def require_equal_shapes(self, source: dict, target: dict) -> None:
        s, t = tuple(source["image"].shape[-2:]), tuple(target["image"].shape[-2:])
        if s != t:
            raise UserError(f"{self.cfg.WHERE}: ClassMix pastes source pixels onto target images, "
                            f"but source batches are {s[0]}x{s[1]} and target batches {t[0]}x{t[1]} "
                            f"(HxW) after the method's crop; set {self.cfg.WHERE}.crop = true with a "
                            f"crop_size both fit ([512, 512] as published)")

    def mixed_loss(self, source: dict, target: dict, labels_t: torch.Tensor, weight_t: torch.Tensor,
                   gen: torch.Generator, logs: dict) -> torch.Tensor:
        """ClassMix, strong augmentation, and the pixel-weighted CE of the student on the result."""
        masks = class_mix_masks(source["label"], gen, self.cfg.mix_classes)
        images, labels, weight = class_mix_batch(masks, source, target["image"], labels_t, weight_t)
        images = self.augment(images, gen)
        loss = weighted_ce(self.segment(images)["out"], labels, weight)
        logs["ce_mix"] = float(loss.detach())
        return loss

    def mic_loss(self, target: dict, labels_t: torch.Tensor, weight_t: torch.Tensor,
                 gen: torch.Generator, logs: dict) -> torch.Tensor:
        """MIC ('separatetrgaug', pseudo-labels and weight shared with the mixing branch)."""
        c = self.cfg
        images = unit_float(target["image"])
        block = block_size(c.mic_block, images.shape[-2], c.reference_height)
        augment = (lambda x, g: self.augment(x, g, per_image=False)) if c.mic_augment else None
        loss, mask = masked_consistency_loss(
            lambda x: self.segment(x)["out"], images, labels_t, weight_t, gen, block=block,
            ratio=c.mic_ratio, fill=input_mean(self.segmenter), augment=augment)
        logs.update(ce_masked=float(loss.detach()), masked_share=float(1 - mask.mean()))
        return loss

    def before_step(self, step: int) -> None:
        self._micro = 0

    def after_step(self, step: int) -> None:
        alpha = ema_alpha(step + self.ema_offset, self.cfg.ema_momentum)
        if self.cfg.teacher_mode == "train":  # batch-statistics teacher: parameters only
            ema_update_parameters(self.teacher, self.segmenter, alpha)
        else:
            ema_update(self.teacher, self.segmenter, alpha)

    def eval_network(self) -> tuple[str, nn.Module]:
        if self.cfg.eval_network == "teacher":
            return "teacher", self.teacher
        return "student", self.segmenter
