"""oracle: supervised training on the labelled target train split - an upper bound, NOT a UDA method.

It is the one method allowed to see target labels; every table marks it as such. The trainer
feeds it the labelled Cityscapes train split in place of the source. Published bound: 65.1 mIoU19
(AdaptSegNet paper, DeepLabV2-R101).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from udabench.method import (Method, OptimConfig, StepOutput, register_method, setting,
                             supervised_loss)


@dataclass
class OracleConfig(OptimConfig):
    WHERE: ClassVar[str] = "methods.oracle"

    aux_weight: float = setting(0.1, ge=0, doc="weight of the auxiliary head's CE (multi-level)")


@register_method("oracle", description="target-supervised upper bound (uses target labels: not UDA)")
class Oracle(Method):
    Config = OracleConfig
    uses_target = False
    uses_target_labels = True

    def training_step(self, source: dict, target: dict, step: int) -> StepOutput:
        # ``source`` is the labelled target train split here (see the module docstring).
        loss, logs, _ = supervised_loss(self, source, self.cfg.aux_weight)
        return StepOutput({"model": loss}, logs)
