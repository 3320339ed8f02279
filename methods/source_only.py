"""source-only: train on labelled source images, never look at the target.

Recipe (docs/methods.md): segmentation cross-entropy on the source (plus 0.1 x the auxiliary
head's CE when the segmenter is multi-level), SGD lr 2.5e-4, momentum 0.9, weight decay 5e-4,
poly 0.9; on the real protocols the schedule of AdaptSegNet's script (stop at 150k of a 250k
horizon), whose "without adaptation" row is the published 36.6 mIoU19 GTA5->Cityscapes
(DeepLabV2-R101).
Target images are never forwarded, so BatchNorm statistics cannot silently adapt to the target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from udabench.method import (Method, OptimConfig, StepOutput, register_method, setting,
                             supervised_loss)


@dataclass
class SourceOnlyConfig(OptimConfig):
    WHERE: ClassVar[str] = "methods.source-only"

    aux_weight: float = setting(0.1, ge=0, doc="weight of the auxiliary head's CE (multi-level)")


@register_method("source-only")
class SourceOnly(Method):
    """Supervised on source only; the no-adaptation baseline (36.6 mIoU19 published)."""

    Config = SourceOnlyConfig
    uses_target = False

    @classmethod
    def published_schedule(cls, cfg: SourceOnlyConfig, bench) -> dict[str, int]:
        return {"iters": 150_000, "decay_iters": 250_000}

    def training_step(self, source: dict, target: dict, step: int) -> StepOutput:
        loss, logs, _ = supervised_loss(self, source, self.cfg.aux_weight)
        return StepOutput({"model": loss}, logs)
