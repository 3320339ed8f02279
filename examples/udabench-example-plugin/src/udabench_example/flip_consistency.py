"""example-flip-consistency: source cross-entropy plus agreement of target predictions with the
predictions for the mirrored image (a worked example of a udabench method, docs/extending.md).

    L = CE(source) [+ aux_weight CE_aux] + weight * mean_pixels || p(x_t) - flip(p(flip(x_t))) ||^2

A street scene and its mirror image should get mirrored segmentations; on the target, where there
are no labels, disagreement between the two is a training signal. The file imports only the
method kit (``udabench.method``) and torch, like the reference methods in udabench's methods/.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from udabench.method import (Method, OptimConfig, StepOutput, register_method, setting,
                             supervised_loss, upsampled_probs)


@dataclass
class FlipConsistencyConfig(OptimConfig):
    WHERE: ClassVar[str] = "methods.example-flip-consistency"

    weight: float = setting(1.0, ge=0, doc="weight of the target flip-consistency term")
    aux_weight: float = setting(0.1, ge=0, doc="auxiliary head's source CE (multi-level)")


@register_method("example-flip-consistency",
                 description="example plug-in: source CE + flip consistency on the target")
class FlipConsistency(Method):
    """Source CE + squared distance between target predictions and their mirrored counterpart."""

    Config = FlipConsistencyConfig

    def training_step(self, source: dict, target: dict, step: int) -> StepOutput:
        loss, logs, _ = supervised_loss(self, source, self.cfg.aux_weight)
        image = target["image"]  # uint8 [B, 3, H, W]; never target["label"]
        size = tuple(image.shape[-2:])
        probs = upsampled_probs(self.segment(image)["out"], size)
        mirrored = upsampled_probs(self.segment(image.flip(-1))["out"], size).flip(-1)
        consistency = (probs - mirrored).pow(2).sum(1).mean()
        logs["flip_consistency"] = float(consistency.detach())
        return StepOutput({"model": loss + self.cfg.weight * consistency}, logs)
