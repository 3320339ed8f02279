"""dacs: domain adaptation via cross-domain mixed sampling (Tranheden et al., WACV 2021).

Recipe (github.com/vikolss/DACS @cc6a87f, ``trainUDA.py`` + ``configs/configUDA.json``; published
52.1 mIoU19 GTA5->Cityscapes, DeepLabV2-R101, 2 ASPP branches)::

    L = CE(student(x_s), y_s)                                   mean over labelled pixels
        + 1 x mean_pixels( w . CE(student(aug(M x_s + (1-M) x_t)), M y_s + (1-M) yhat_t) )

- Teacher: EMA of the student's *parameters* (alpha_t = min(1 - 1/(t+1), 0.99), updated after
  every optimiser step), run in train mode (BatchNorm on the target batch's statistics).
- yhat_t = arg-max of the teacher's softmax on the plain target batch; w = 1 on pasted source
  pixels, elsewhere the share of the batch's target pixels with confidence >= 0.968.
- ClassMix: per source image, ceil(n/2) of its n label values (255 included) drawn without
  replacement; M = that image's pixels of those classes; mixed labels keep 255 (ignored, but
  counted in the all-pixel mean).
- aug: one draw per batch decides colour jitter (U > 0.2) and one Gaussian blur (U > 0.5); each
  mixed image then gets its own kornia-0.5 ColorJitter(0.25, 0.25, 0.25, 0.25) and blur sigma
  U(0.15, 1.15), kernel ~10% of the side (udabench.method.strong_augment).
- SGD lr 2.5e-4 (head x10), momentum 0.9, wd 5e-4, poly 0.9 over 250k iterations, batch 2 + 2,
  512x512 crops, no flip. The student is evaluated.

``mic = true`` adds MIC's masked image consistency (Hoyer et al., CVPR 2023): the target batch,
jittered and blurred, block-masked (blocks of 32 px at 512-px crops, each masked with probability
0.7), against the same pseudo-labels and weight (``mic_weight`` 1). The MIC paper's "DACS + MIC"
row ran DACS inside the DAFormer framework (AdamW, warm-up); that is ``daformer`` with its
strategies switched off, not this file's SGD recipe.

The method crops both batches itself (``crop_size`` 512x512, uniform offsets; a side no longer
than the crop is kept whole; MiniCity scales the crop with its resolution, 128x128): ClassMix
needs one shape for both domains, and a run whose batches still differ stops at its first step in
one line. ``crop_size`` (pixels) and ``ema_momentum`` (per iteration) declare their units, so a
benchmark of another size rescales them (udabench.benchmarks.RunDefaults.rescaled).

Departures (docs/methods.md):
- Random numbers come from one generator per step seeded from the run (exact resume); the
  official code mixes numpy, Python and torch global generators.
- DACS jitters Caffe-style BGR images with RGB formulas (hue and saturation act on swapped
  channels there); udabench jitters RGB.
- Logits are upsampled with align_corners=False (DACS: True), as everywhere in udabench.
- Init: DACS starts from the ImageNet+COCO DeepLab file (``model.init = caffe-deeplab:<path>``);
  the default is ImageNet. The last checkpoint is evaluated (DACS kept the best on val).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import nn

from udabench.method import (Allowed, ClassMixTeacher, ConfigError, Method, OptimConfig, StepOutput,
                             cross_entropy, pseudo_weight_map, register_method, setting,
                             teacher_pseudo_labels)

JITTER_OPS = ("published", "torchvision")


@dataclass
class DACSConfig(OptimConfig):
    WHERE: ClassVar[str] = "methods.dacs"

    crop: bool = setting(True, free=True,
                         doc="random crops of both batches (sides longer than crop_size)")
    crop_size: tuple[int, int] = setting((512, 512), min_len=2, max_len=2, item=Allowed(ge=1),
                                         unit="pixels",
                                         doc="[height, width] of the training crops")
    crop_cat_max_ratio: float = setting(1.0, gt=0, le=1, doc="source crops re-drawn while one class "
                                                              "covers >= this share; 1 = off")
    flip_p: float = setting(0.0, ge=0, le=1, doc="left-right flip of each image of both batches")
    ema_momentum: float = setting(0.99, ge=0, le=1, unit="per_iteration",
                                  doc="teacher alpha, warmed up as min(1 - 1/(t+1), alpha)")
    threshold: float = setting(0.968, ge=0, le=1,
                               doc="confidence (>=) a target pixel needs to count in the weight")
    mix_weight: float = setting(1.0, ge=0, doc="weight of the mixed-image loss (consistency_weight)")
    mix_classes: Literal["image", "batch"] = setting(
        "image", choices=("image", "batch"),
        doc="ClassMix draws from each source image's classes (DACS) or the batch's (DAFormer)")
    jitter_strength: float = setting(0.25, ge=0, le=1,
                                     doc="ColorJitter brightness/contrast/saturation/hue")
    jitter_threshold: float = setting(0.2, ge=0, le=1,
                                      doc="jitter applied when U(0,1) exceeds it (p 0.8)")
    jitter_ops: Literal["published", "torchvision"] = setting(
        "published", choices=JITTER_OPS, doc="published: kornia 0.5's ops; torchvision: PIL-style")
    blur: bool = setting(True, free=True, doc="Gaussian blur of mixed images (when U(0,1) > 0.5)")
    teacher_mode: Literal["train", "eval"] = setting(
        "train", choices=("train", "eval"),
        doc="train: BatchNorm on batch statistics, parameters-only EMA (DACS); eval: running "
            "statistics, EMA'd with the parameters")
    eval_network: Literal["student", "teacher"] = setting("student", choices=("student", "teacher"))
    mic: bool = setting(False, free=True, doc="add MIC's masked image consistency")
    mic_block: int = setting(32, ge=1, doc="mask block in pixels at reference_height-pixel crops")
    mic_ratio: float = setting(0.7, ge=0, lt=1, doc="probability that a block is masked")
    mic_weight: float = setting(1.0, ge=0, doc="weight of the masked loss (mask_lambda)")
    mic_augment: bool = setting(True, free=True, doc="jitter and blur the target before masking")
    reference_height: int = setting(512, ge=1, doc="crop height the pixel sizes are published for; "
                                                    "they scale with the batch height")


@register_method("dacs", description="DACS: ClassMix with an EMA teacher (WACV 2021)")
class DACS(ClassMixTeacher, Method):
    """DACS (WACV 2021; 52.1 mIoU19 published, DeepLabV2-R101 with 2 ASPP branches)."""

    Config = DACSConfig
    ema_offset = 0  # the teacher follows the student after every optimiser step t with alpha(t)

    @classmethod
    def model_defaults(cls, cfg: DACSConfig) -> dict:
        # DACS's Classifier_Module returns inside its loop: only dilations 6 and 12 are summed.
        return {"aspp_branches": 2}

    @classmethod
    def published_schedule(cls, cfg: DACSConfig, bench) -> dict[str, int]:
        return {"iters": 250_000, "decay_iters": 250_000, "batch_size": 2}

    @classmethod
    def check_plan(cls, cfg: DACSConfig, model) -> None:
        if model.multi_level:
            raise ConfigError("model.multi_level = true is not allowed with methods.dacs: DACS trains "
                              "a single-level network; drop model.multi_level")

    def __init__(self, segmenter: nn.Module, cfg: DACSConfig, ctx):
        super().__init__(segmenter, cfg, ctx)
        self.init_teacher()

    def training_step(self, source: dict, target: dict, step: int) -> StepOutput:
        c = self.cfg
        gen = self.step_generator(step)
        source, target = self.prepare_batches(source, target, gen)
        self.require_equal_shapes(source, target)
        loss = cross_entropy(self.segment(source["image"])["out"], source["label"])
        logs = {"ce": float(loss.detach())}
        labels_t, share = teacher_pseudo_labels(self.segment, self.teacher, target["image"],
                                                c.threshold, c.teacher_mode)
        weight_t = pseudo_weight_map(share, tuple(labels_t.shape))
        logs["confident"] = float(share)
        loss = loss + c.mix_weight * self.mixed_loss(source, target, labels_t, weight_t, gen, logs)
        if c.mic:
            loss = loss + c.mic_weight * self.mic_loss(target, labels_t, weight_t, gen, logs)
        return StepOutput({"model": loss}, logs)
