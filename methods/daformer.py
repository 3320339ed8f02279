"""daformer: DAFormer's network and training strategies (Hoyer et al., CVPR 2022).

Recipe (github.com/lhoyer/DAFormer @e6f6e04, ``configs/daformer/gta2cs_uda_warm_fdthings_rcs_
croppl_a999_daformer_mitb5_s0.py`` and its bases; published 68.3 mIoU19 GTA5->Cityscapes, 60.9
SYNTHIA, mean of 3 seeds, final student): DACS self-training (``mmseg/models/uda/dacs.py``) with

- network: MiT-B5 encoder + the context-aware fusion head (``model.backbone = "mit_b5"``,
  ``model.head = "daformer"``, set by this method); the official ImageNet weights are a file
  (``model.init = "/path/to/mit_b5.pth"``);
- AdamW lr 6e-5, betas (0.9, 0.999), weight decay 0.01 (0 on the encoder's normalisation layers),
  head lr x10 (``model.head_lr_mult``); linear warm-up over 1,500 iterations from 1e-6 x lr,
  then poly 1.0 to 0 at 40k iterations; batch 2 + 2 on 512x512 crops;
- EMA teacher alpha 0.999 (warmed up as min(1 - 1/(t+1), 0.999), parameters only, updated at
  the start of each step), run in train mode with dropout and drop-path off;
- pseudo-labels: teacher arg-max; weight = share of the batch's pixels with confidence >= 0.968,
  0 on the top 15 and bottom 120 rows of each 512-row crop (``pseudo_ignore_top/bottom``, scaled
  with the crop height);
- ClassMix from the classes of the whole source batch (``get_class_masks``), colour jitter 0.2
  when U > 0.2, Gaussian blur when U > 0.5; mixed CE x weight averaged over all pixels; the
  source CE too is averaged over all pixels (mmseg 0.x; ``source_ce``);
- rare class sampling (``rcs``): temperature 0.01, images with > 3000 pixels of the class, crops
  re-drawn (up to 10 times) until they hold > 1500 (udabench.method.RareClassSampler);
- ImageNet feature distance (``fd``): 0.005 x mean L2 distance between the student's deepest
  encoder features on the source batch and those of the frozen ImageNet encoder, on feature
  cells of thing classes covering >= 75% of the cell.

Each strategy is a setting, so the paper's ablations are configs: "DeepLabV2 + DAFormer's
strategies" is ``--set model.backbone=resnet101 --set model.head=aspp --set model.aspp_branches=2``
(the paper's ``dlv2red``). ``mic = true`` adds MIC (Hoyer et al., CVPR 2023): the target batch
jittered, blurred and block-masked (32-px blocks at 512-px crops, ratio 0.7) against the same
pseudo-labels and weight, weight 1 (MIC Table 1's "DAFormer + MIC").

The trainer gives AdamW and the warm-up (``OptimizerSpec.kind/warmup_iters``); ``rcs`` needs the
source loader to draw ``source_sampler()`` (``MethodContext.source_class_counts``), refused by
``check_plan`` in a udabench without it.

The method crops (512x512; source crops re-drawn while one class covers >= 75%) and flips (0.5)
both batches itself, after the benchmark's resize. ``warmup_iters`` (iterations), ``ema_momentum``
(per iteration) and ``crop_size`` (pixels) declare their units, so a benchmark of another size
rescales them (MiniCity: 11-iteration warm-up, alpha 0.875, 128x128 crops).

Departures (docs/methods.md):
- GTA5 is resized to the benchmark's 1280x720 (bicubic); mmseg keeps the aspect (1280x704,
  bilinear).
- RCS: a class with source pixels but no image above ``rcs_min_pixels`` is left out (the
  official code stops on an assertion); ``rcs_min_pixels`` is in full-resolution pixels.
- FD: when the feature grid does not divide the label (DeepLabV2's ceil-mode 65x65 at 512) the
  label is pooled over adaptive cells (the official code asserts a square divisor); a batch
  without a kept cell gives 0 (the official empty mean is NaN, with zero gradient).
- Pseudo-label border rows and MIC's block scale with the batch height (MIC's own rule).
- Random numbers come from one generator per step seeded from the run (exact resume).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import nn

from udabench.method import (THING_CLASSES, Allowed, ClassMixTeacher, ConfigError, FrozenEncoder,
                             Method, MethodContext, OptimConfig, OptimizerSpec, RareClassSampler,
                             StepOutput, UserError, border_rows, cross_entropy, missing_network,
                             pseudo_weight_map, register_method, setting, teacher_pseudo_labels,
                             thing_feature_distance, unit_float, weighted_ce)

NETWORK = {"backbone": "mit_b5", "head": "daformer"}


def _has_field(cls: type, name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(cls)}


@dataclass
class DAFormerConfig(OptimConfig):
    WHERE: ClassVar[str] = "methods.daformer"

    # -- optimisation (schedules/adamw.py, poly10warm.py) --
    lr: float = setting(6e-5, gt=0, unit="rate",
                        doc="AdamW lr of the encoder (head x model.head_lr_mult = 10)")
    optimizer: Literal["adamw", "sgd"] = setting("adamw", choices=("adamw", "sgd"),
                                                 doc="sgd: momentum, as MIC's AdvSeg/MinEnt rows")
    betas: tuple[float, float] = setting((0.9, 0.999), min_len=2, max_len=2, item=Allowed(ge=0, lt=1))
    weight_decay: float = setting(0.01, ge=0)
    norm_weight_decay: float = setting(0.0, ge=0, doc="weight decay of the encoder's norm layers")
    poly_power: float = setting(1.0, ge=0)
    warmup_iters: int = setting(1500, ge=0, unit="iterations", doc="linear learning-rate warm-up; 0 = off")
    warmup_ratio: float = setting(1e-6, gt=0, le=1, doc="warm-up starts at ratio x lr")
    # -- data (datasets/uda_gta_to_cityscapes_512x512.py) --
    crop: bool = setting(True, free=True, doc="random crops of both batches (sides longer than crop_size)")
    crop_size: tuple[int, int] = setting((512, 512), min_len=2, max_len=2, item=Allowed(ge=1),
                                         unit="pixels")
    crop_cat_max_ratio: float = setting(0.75, gt=0, le=1, doc="source crops re-drawn (10x at most) "
                                                               "while one class covers >= this share")
    flip_p: float = setting(0.5, ge=0, le=1)
    # -- self-training (uda/dacs.py) --
    ema_momentum: float = setting(0.999, ge=0, le=1, unit="per_iteration")
    threshold: float = setting(0.968, ge=0, le=1)
    pseudo_ignore_top: int = setting(15, ge=0, doc="rows of weight 0 at reference_height; 0 = off")
    pseudo_ignore_bottom: int = setting(120, ge=0, doc="rows of weight 0 at reference_height; 0 = off")
    source_ce: Literal["all_pixels", "labelled_pixels"] = setting(
        "all_pixels", choices=("all_pixels", "labelled_pixels"),
        doc="mean of the source CE: all pixels, void as 0 (mmseg 0.x) or labelled pixels only")
    mix_weight: float = setting(1.0, ge=0)
    mix_classes: Literal["image", "batch"] = setting("batch", choices=("image", "batch"))
    jitter_strength: float = setting(0.2, ge=0, le=1)
    jitter_threshold: float = setting(0.2, ge=0, le=1)
    jitter_ops: Literal["published", "torchvision"] = setting("published",
                                                              choices=("published", "torchvision"))
    blur: bool = setting(True, free=True)
    teacher_mode: Literal["train", "eval"] = setting("train", choices=("train", "eval"))
    eval_network: Literal["student", "teacher"] = setting("student", choices=("student", "teacher"))
    # -- rare class sampling --
    rcs: bool = setting(True, free=True, doc="rare class sampling of source images")
    rcs_temperature: float = setting(0.01, gt=0)
    rcs_min_pixels: int = setting(3000, ge=0, doc="pixels of the class an image needs (full resolution)")
    rcs_min_crop_ratio: float = setting(0.5, ge=0, doc="crops re-drawn until > min_pixels x this")
    # -- ImageNet feature distance --
    fd: bool = setting(True, free=True, doc="ImageNet feature distance on thing classes")
    fd_weight: float = setting(0.005, ge=0)
    fd_classes: tuple[int, ...] = setting(THING_CLASSES, min_len=1, item=Allowed(ge=0, le=254))
    fd_min_ratio: float = setting(0.75, ge=0, le=1, doc="share of a feature cell its class must cover")
    # -- MIC --
    mic: bool = setting(False, free=True, doc="add MIC's masked image consistency")
    mic_block: int = setting(32, ge=1)
    mic_ratio: float = setting(0.7, ge=0, lt=1)
    mic_weight: float = setting(1.0, ge=0)
    mic_augment: bool = setting(True, free=True)
    reference_height: int = setting(512, ge=1, doc="crop height the pixel sizes are published for")


@register_method("daformer",
                 description="DAFormer: MiT-B5 + fusion head, RCS, ImageNet FD, warm-up (CVPR 2022)")
class DAFormer(ClassMixTeacher, Method):
    """DAFormer (CVPR 2022; 68.3 mIoU19 / 60.9 mIoU16 published, MiT-B5 + DAFormer head)."""

    Config = DAFormerConfig
    ema_offset = 1  # the teacher is updated at the start of step t+1 with alpha(t+1)

    @classmethod
    def model_defaults(cls, cfg: DAFormerConfig) -> dict:
        missing = missing_network(NETWORK["backbone"], NETWORK["head"])
        if missing:
            raise ConfigError(f"methods.daformer needs the DAFormer network, but {' and '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} not registered in this udabench")
        return dict(NETWORK)

    @classmethod
    def published_schedule(cls, cfg: DAFormerConfig, bench) -> dict[str, int]:
        return {"iters": 40_000, "decay_iters": 40_000, "batch_size": 2}

    @classmethod
    def check_plan(cls, cfg: DAFormerConfig, model) -> None:
        if model.multi_level:
            raise ConfigError("model.multi_level = true is not allowed with methods.daformer: DAFormer "
                              "trains a single-level network; drop model.multi_level")
        if cfg.fd and model.init == "scratch":
            raise ConfigError("methods.daformer.fd = true is not allowed with model.init = 'scratch': "
                              "the feature distance pulls towards ImageNet features; give pretrained "
                              "weights (model.init) or set methods.daformer.fd=false")
        if cfg.warmup_iters and not _has_field(OptimizerSpec, "warmup_iters"):
            raise ConfigError(f"methods.daformer.warmup_iters = {cfg.warmup_iters} is not allowed: this "
                              "udabench's trainer has no learning-rate warm-up "
                              "(OptimizerSpec.warmup_iters); set methods.daformer.warmup_iters=0")
        if cfg.rcs and not _has_field(MethodContext, "source_class_counts"):
            raise ConfigError("methods.daformer.rcs = true is not allowed: this udabench's trainer "
                              "cannot steer which source images are loaded "
                              "(MethodContext.source_class_counts); set methods.daformer.rcs=false")

    def __init__(self, segmenter: nn.Module, cfg: DAFormerConfig, ctx):
        super().__init__(segmenter, cfg, ctx)
        self.init_teacher()
        # DAFormer's imnet_model: the encoder as initialised (ImageNet), frozen, in eval mode.
        self.imnet = FrozenEncoder(segmenter) if cfg.fd else None
        self.sampler: RareClassSampler | None = None
        if cfg.rcs:
            counts = getattr(ctx, "source_class_counts", None)
            if counts is None:
                raise UserError("methods.daformer.rcs = true needs the source labels' class counts "
                                "(MethodContext.source_class_counts); set methods.daformer.rcs=false")
            self.sampler = RareClassSampler(counts() if callable(counts) else counts,
                                            cfg.rcs_temperature, cfg.rcs_min_pixels,
                                            cfg.rcs_min_crop_ratio)

    def source_sampler(self) -> RareClassSampler | None:
        """Which source images to load and for which class (the trainer's source loader draws
        ``sampler.draw(n, generator)`` per epoch and crops with ``rare_class_crop``); None =
        the usual shuffled epochs."""
        return self.sampler

    def optimizers(self) -> dict[str, OptimizerSpec]:
        c = self.cfg
        groups = self.segmenter.param_groups(c.lr, norm_weight_decay=c.norm_weight_decay)
        extra = {}
        if c.warmup_iters:
            if not _has_field(OptimizerSpec, "warmup_iters"):
                raise UserError("methods.daformer.warmup_iters: this udabench's trainer has no "
                                "learning-rate warm-up; set methods.daformer.warmup_iters=0")
            extra = {"warmup_iters": c.warmup_iters, "warmup_ratio": c.warmup_ratio}
        return {"model": OptimizerSpec(groups, kind=c.optimizer, lr=c.lr, momentum=c.momentum,
                                       betas=tuple(c.betas), weight_decay=c.weight_decay,
                                       poly_power=c.poly_power, **extra)}

    def training_step(self, source: dict, target: dict, step: int) -> StepOutput:
        c = self.cfg
        gen = self.step_generator(step)
        source, target = self.prepare_batches(source, target, gen)
        self.require_equal_shapes(source, target)
        out_s = self.segment(source["image"])
        loss = (weighted_ce(out_s["out"], source["label"]) if c.source_ce == "all_pixels"
                else cross_entropy(out_s["out"], source["label"]))
        logs = {"ce": float(loss.detach())}
        if self.imnet is not None:
            fd, cells = thing_feature_distance(out_s["feat"], self.imnet(unit_float(source["image"])),
                                               source["label"], tuple(c.fd_classes),
                                               c.fd_min_ratio, self.ctx.num_classes)
            loss = loss + c.fd_weight * fd
            logs.update(feature_distance=float(fd.detach()), fd_cells=float(cells.float().mean()))
        labels_t, share = teacher_pseudo_labels(self.segment, self.teacher, target["image"],
                                                c.threshold, c.teacher_mode)
        height = labels_t.shape[-2]
        weight_t = pseudo_weight_map(share, tuple(labels_t.shape),
                                     border_rows(c.pseudo_ignore_top, height, c.reference_height),
                                     border_rows(c.pseudo_ignore_bottom, height, c.reference_height))
        logs["confident"] = float(share)
        loss = loss + c.mix_weight * self.mixed_loss(source, target, labels_t, weight_t, gen, logs)
        if c.mic:
            loss = loss + c.mic_weight * self.mic_loss(target, labels_t, weight_t, gen, logs)
        return StepOutput({"model": loss}, logs)
