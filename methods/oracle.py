"""oracle: supervised training on the labelled target train split - an upper bound, NOT a UDA method.

It is the one method allowed to see target labels; every table marks it as such. The trainer
feeds it the labelled Cityscapes train split in place of the source. Published bound: 65.1 mIoU19
(AdaptSegNet paper, DeepLabV2-R101).
"""
from __future__ import annotations

from .source_only import SourceOnlyConfig, supervised_loss
from udabench.method import Method, StepOutput
from udabench.registry import register_method


@register_method("oracle", description="target-supervised upper bound (uses target labels: not UDA)")
class Oracle(Method):
    Config = SourceOnlyConfig
    uses_target = False
    uses_target_labels = True

    def training_step(self, source: dict, target: dict, step: int) -> StepOutput:
        # ``source`` is the labelled target train split here (see the class docstring).
        loss, logs = supervised_loss(self, source, self.cfg.aux_weight)
        return StepOutput({"model": loss}, logs)
