"""self-training-online: plain online self-training from an EMA teacher (a udabench proposal).

An EMA teacher (momentum 0.99, warmed up as min(1 - 1/(t+1), 0.99) as in DACS) labels the current
target batch; pixels with confidence >= 0.968 count. ``weighting = "fraction"`` weights the target
CE over all pixels by the share of confident pixels (DACS); ``"mask"`` ignores the unconfident
ones. The teacher is in the state dict; the student is evaluated unless ``eval_network =
"teacher"``. DACS (``dacs``) is this plus ClassMix and its augmentations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from udabench.method import (IGNORE, Method, OptimConfig, StepOutput, ema_alpha, ema_update,
                             make_teacher, multi_level_ce, register_method, setting,
                             supervised_loss, upsampled_probs)


@dataclass
class OnlineSelfTrainingConfig(OptimConfig):
    WHERE: ClassVar[str] = "methods.self-training-online"

    ema_momentum: float = setting(0.99, ge=0, le=1, unit="per_iteration")
    threshold: float = setting(0.968, ge=0, le=1, doc="as in DACS")
    weighting: Literal["fraction", "mask"] = setting("fraction", choices=("fraction", "mask"))
    target_weight: float = setting(1.0, ge=0)
    warmup_iters: int = setting(0, ge=0, unit="iterations",
                                doc="source-only iterations before the target loss")
    aux_weight: float = setting(0.1, ge=0)
    eval_network: Literal["student", "teacher"] = setting("student", choices=("student", "teacher"))


@register_method("self-training-online", description="online self-training with an EMA teacher")
class OnlineSelfTraining(Method):
    """Plain online self-training (proposal; EMA teacher and 0.968 threshold as in DACS)."""

    Config = OnlineSelfTrainingConfig

    def __init__(self, segmenter: nn.Module, cfg: OnlineSelfTrainingConfig, ctx):
        super().__init__(segmenter, cfg, ctx)
        self.teacher = make_teacher(segmenter)

    @torch.no_grad()
    def teacher_labels(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels uint8 [B,H,W], weight): confident argmax of the teacher on the batch."""
        self.teacher.eval()
        probs = upsampled_probs(self.segment(image, self.teacher)["out"], tuple(image.shape[-2:]))
        conf, label = probs.max(1)
        confident = conf >= self.cfg.threshold
        if self.cfg.weighting == "mask":
            label[~confident] = IGNORE
            return label.to(torch.uint8), conf.new_ones(())
        return label.to(torch.uint8), confident.float().mean()

    def training_step(self, source: dict, target: dict, step: int) -> StepOutput:
        c = self.cfg
        loss, logs, _ = supervised_loss(self, source, c.aux_weight)
        if step >= c.warmup_iters:
            labels, weight = self.teacher_labels(target["image"])
            loss_t = weight * multi_level_ce(self.segment(target["image"]), labels, c.aux_weight)
            loss = loss + c.target_weight * loss_t
            logs.update(ce_target=float(loss_t.detach()), confident=float(weight))
        return StepOutput({"model": loss}, logs)

    def after_step(self, step: int) -> None:
        ema_update(self.teacher, self.segmenter, ema_alpha(step, self.cfg.ema_momentum))

    def eval_network(self) -> tuple[str, nn.Module]:
        if self.cfg.eval_network == "teacher":
            return "teacher", self.teacher
        return "student", self.segmenter
