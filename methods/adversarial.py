"""adversarial (AdaptSegNet / AdvEnt) and minent: output-space alignment and entropy minimisation.

``adversarial`` - Tsai et al., "Learning to Adapt Structured Output Space for Semantic
Segmentation", CVPR 2018 (AdaptSegNet, published 42.4 mIoU19 GTA5->Cityscapes multi-level; LS-GAN
single level 44.1), and Vu et al., "ADVENT: Adversarial Entropy Minimization for Domain Adaptation
in Semantic Segmentation", CVPR 2019 (AdvEnt, published 43.8; ``input = "entropy"``).

Generator step (discriminators untouched: the trainer sends each loss only into its own
optimiser's parameters, so the adversarial term flows *through* D into the segmenter only)::

    L_model = CE(main, y_s) + 0.1 CE(aux, y_s)
              + 0.001 GAN(D_main(s(P_t,main)), source) + 0.0002 GAN(D_aux(s(P_t,aux)), source)

Discriminator step, on detached predictions, per level::

    L_D = 0.5 GAN(D(s(P_s)), source) + 0.5 GAN(D(s(P_t)), target)      source = 0, target = 1

``s`` = softmax of the logits upsampled (bilinear) to the input size (AdaptSegNet), or the
self-information map I_c = -p_c log p_c / log C (AdvEnt). ``gan = "bce"``: BCE with logits;
``"lsgan"``: MSE to the labels, lambda_adv 0.01, single level (the AdaptSegNet LS-GAN recipe).
One discriminator per level (5 convs, no sigmoid), Adam lr 1e-4, betas (0.9, 0.99), same poly decay
as the segmenter.

Multi-level needs the auxiliary head: ``model_defaults`` asks the runner for a multi-level segmenter
whenever the recipe is multi-level. If a user then removes it (``--set model.multi_level=false``) the
method raises a UserError rather than silently training another recipe;
``methods.adversarial.multi_level=false`` chooses single level explicitly. Departure: upsampling uses align_corners=False (the original code used
True); the authors' advice of smaller multi-level weights with current PyTorch (0.0005 / 0.00005)
is left to the user (``adv_weight`` / ``adv_aux_weight``).

``minent`` - the MinEnt variant of ADVENT: CE(source) + 0.001 x mean normalised entropy of target
predictions (+ 0.0002 x for the aux head when multi-level), no discriminator. The published
"45.5" is an AdvEnt+MinEnt ensemble, not a single MinEnt model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from udabench.method import (Allowed, ConfigError, Discriminator, Method, OptimConfig,
                             OptimizerSpec, StepOutput, UserError, normalised_entropy,
                             register_method, self_information, setting, supervised_loss,
                             upsampled_probs)

SOURCE_LABEL = 0.0  # domain labels of AdaptSegNet/AdvEnt
TARGET_LABEL = 1.0


def discriminator_input(logits: torch.Tensor, size: tuple[int, int], kind: str) -> torch.Tensor:
    probs = upsampled_probs(logits, size)
    return self_information(probs) if kind == "entropy" else probs


def gan_loss(d_out: torch.Tensor, label: float, gan: str) -> torch.Tensor:
    """BCE-with-logits (vanilla GAN) or MSE (LS-GAN) of D's output map against a domain label."""
    d_out = d_out.float()
    target = torch.full_like(d_out, label)
    if gan == "lsgan":
        return F.mse_loss(d_out, target)
    return F.binary_cross_entropy_with_logits(d_out, target)


# Published schedules (stop / poly horizon): AdaptSegNet train_gta2cityscapes_multi.py stops at
# 150k of a 250k horizon; ADVENT's config stops at 120k of 250k on GTA5, and its SYNTHIA runs
# (the authors' DADA configs) train 90k with a 90k horizon.
ADAPTSEGNET_SCHEDULE = {"iters": 150_000, "decay_iters": 250_000}


def advent_schedule(bench) -> dict[str, int]:
    if bench.source_kind == "synthia":
        return {"iters": 90_000, "decay_iters": 90_000}
    return {"iters": 120_000, "decay_iters": 250_000}


def require_aux_head(multi_level: bool, model, name: str) -> None:
    """A multi-level recipe needs the segmenter's auxiliary head: refused before any work."""
    if multi_level and not model.multi_level:
        raise ConfigError(
            f"model.multi_level = false is not allowed with methods.{name}.multi_level = true: the "
            f"multi-level recipe needs the auxiliary head; drop model.multi_level=false or set "
            f"methods.{name}.multi_level=false")


def _resolve_levels(method: Method, multi_level: bool, name: str) -> list[str]:
    """Output levels the method aligns: main, plus aux when multi-level (needs the aux head)."""
    has_aux = getattr(method.segmenter, "aux_head", None) is not None
    if multi_level and not has_aux:
        raise UserError(
            f"method '{name}' is multi-level but the segmenter has no auxiliary head; "
            f"add --set model.multi_level=true (or --set methods.{name}.multi_level=false)"
        )
    return ["main", "aux"] if multi_level else ["main"]


_KEY = {"main": "out", "aux": "aux"}


@dataclass
class AdversarialConfig(OptimConfig):
    WHERE: ClassVar[str] = "methods.adversarial"

    input: Literal["softmax", "entropy"] = setting("softmax", choices=("softmax", "entropy"),
                                                   doc="softmax: AdaptSegNet; entropy: AdvEnt")
    gan: Literal["bce", "lsgan"] = setting("bce", choices=("bce", "lsgan"))
    multi_level: bool | None = setting(None, free=True,
                                       doc="None = the recipe of `gan`: true (bce), false (lsgan)")
    adv_weight: float | None = setting(None, ge=0, doc="main level; None = 0.001 (bce), 0.01 (lsgan)")
    adv_aux_weight: float = setting(0.0002, ge=0, doc="aux level (multi-level only)")
    aux_weight: float = setting(0.1, ge=0, doc="segmentation CE of the aux head on the source")
    d_lr: float = setting(1e-4, gt=0, unit="rate", doc="discriminators' Adam learning rate")
    d_betas: tuple[float, float] = setting((0.9, 0.99), min_len=2, max_len=2,
                                           item=Allowed(ge=0, lt=1))
    d_weight_decay: float = setting(0.0, ge=0)
    d_poly_power: float = setting(0.9, ge=0)
    ndf: int = setting(64, ge=1, doc="discriminator width (channels of its first conv)")

    def resolved_multi_level(self) -> bool:
        return self.gan == "bce" if self.multi_level is None else self.multi_level

    def resolved_adv_weight(self) -> float:
        if self.adv_weight is not None:
            return self.adv_weight
        return 0.01 if self.gan == "lsgan" else 0.001


@register_method("adversarial", description="AdaptSegNet / AdvEnt output-space adversarial alignment")
class Adversarial(Method):
    """AdaptSegNet (42.4 mIoU19 published, multi-level; LS-GAN 44.1) / AdvEnt (43.8, input=entropy)."""

    Config = AdversarialConfig

    @classmethod
    def model_defaults(cls, cfg: AdversarialConfig) -> dict:
        # The released AdaptSegNet classifier sums only the dilation-6 and -12 branches (a
        # `return` inside its loop; its LS-GAN variant is the same code); ADVENT sums all four.
        out = {"aspp_branches": 2 if cfg.input == "softmax" else 4}
        if cfg.resolved_multi_level():
            out["multi_level"] = True
        return out

    @classmethod
    def published_schedule(cls, cfg: AdversarialConfig, bench) -> dict[str, int]:
        return advent_schedule(bench) if cfg.input == "entropy" else ADAPTSEGNET_SCHEDULE

    @classmethod
    def check_plan(cls, cfg: AdversarialConfig, model) -> None:
        require_aux_head(cfg.resolved_multi_level(), model, "adversarial")

    def __init__(self, segmenter: nn.Module, cfg: AdversarialConfig, ctx):
        super().__init__(segmenter, cfg, ctx)
        self.levels = _resolve_levels(self, cfg.resolved_multi_level(), "adversarial")
        self.weights = {"main": cfg.resolved_adv_weight(), "aux": cfg.adv_aux_weight}
        self.discriminators = nn.ModuleDict(
            {lvl: Discriminator(ctx.num_classes, cfg.ndf) for lvl in self.levels}
        )

    def optimizers(self) -> dict[str, OptimizerSpec]:
        c = self.cfg
        specs = super().optimizers()
        specs["discriminator"] = OptimizerSpec(
            [{"name": "discriminator", "params": list(self.discriminators.parameters())}],
            kind="adam", lr=c.d_lr, betas=tuple(c.d_betas), weight_decay=c.d_weight_decay,
            poly_power=c.d_poly_power,
        )
        return specs

    def training_step(self, source: dict, target: dict, step: int) -> StepOutput:
        c = self.cfg
        seg_loss, logs, out_s = supervised_loss(self, source, c.aux_weight)
        image_t = target["image"]
        out_t = self.segment(image_t)
        size_s, size_t = tuple(source["image"].shape[-2:]), tuple(image_t.shape[-2:])
        adv = seg_loss.new_zeros(())
        d_loss = seg_loss.new_zeros(())
        for lvl in self.levels:
            disc = self.discriminators[lvl]
            map_t = discriminator_input(out_t[_KEY[lvl]], size_t, c.input)
            # One D pass on the target serves both losses: the trainer sends the generator loss
            # only into the segmenter and the D loss only into D, which is exactly what the
            # published code gets from a second pass on detached predictions (one pass cheaper).
            d_out_t = disc(map_t)
            # Generator: make target predictions look like source ones to D.
            g = gan_loss(d_out_t, SOURCE_LABEL, c.gan)
            adv = adv + self.weights[lvl] * g
            # Discriminator: source predictions detached; D's loss never reaches the segmenter.
            map_s = discriminator_input(out_s[_KEY[lvl]].detach(), size_s, c.input)
            d_s = gan_loss(disc(map_s), SOURCE_LABEL, c.gan)
            d_t = gan_loss(d_out_t, TARGET_LABEL, c.gan)
            d_loss = d_loss + 0.5 * d_s + 0.5 * d_t
            logs[f"adv_{lvl}"] = float(g.detach())
            logs[f"d_{lvl}"] = float((0.5 * d_s + 0.5 * d_t).detach())
        return StepOutput({"model": seg_loss + adv, "discriminator": d_loss}, logs)


@dataclass
class MinEntConfig(OptimConfig):
    WHERE: ClassVar[str] = "methods.minent"

    ent_weight: float = setting(0.001, ge=0, doc="main level")
    ent_aux_weight: float = setting(0.0002, ge=0, doc="aux level, when multi-level")
    aux_weight: float = setting(0.1, ge=0, doc="segmentation CE of the aux head on the source")
    multi_level: bool = setting(True, free=True, doc="ADVENT's minent.yml: MULTI_LEVEL True")


@register_method("minent", description="ADVENT's MinEnt: entropy minimisation on the target")
class MinEnt(Method):
    """MinEnt (ADVENT, CVPR 2019): CE(source) + 0.001 x mean normalised target entropy; no D."""

    Config = MinEntConfig

    @classmethod
    def model_defaults(cls, cfg: MinEntConfig) -> dict:
        return {"multi_level": cfg.multi_level, "aspp_branches": 4}  # ADVENT's network

    @classmethod
    def published_schedule(cls, cfg: MinEntConfig, bench) -> dict[str, int]:
        return advent_schedule(bench)

    @classmethod
    def check_plan(cls, cfg: MinEntConfig, model) -> None:
        require_aux_head(cfg.multi_level, model, "minent")

    def __init__(self, segmenter: nn.Module, cfg: MinEntConfig, ctx):
        super().__init__(segmenter, cfg, ctx)
        self.levels = _resolve_levels(self, cfg.multi_level, "minent")
        self.weights = {"main": cfg.ent_weight, "aux": cfg.ent_aux_weight}

    def training_step(self, source: dict, target: dict, step: int) -> StepOutput:
        loss, logs, _ = supervised_loss(self, source, self.cfg.aux_weight)
        image_t = target["image"]
        out_t = self.segment(image_t)
        for lvl in self.levels:
            ent = normalised_entropy(upsampled_probs(out_t[_KEY[lvl]], tuple(image_t.shape[-2:])))
            ent = ent.mean()
            loss = loss + self.weights[lvl] * ent
            logs[f"ent_{lvl}"] = float(ent.detach())
        return StepOutput({"model": loss}, logs)
