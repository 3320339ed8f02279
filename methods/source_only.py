"""source-only: train on labelled source images, never look at the target.

Recipe (methods.md): segmentation cross-entropy on the source (plus 0.1 x the auxiliary head's CE
when the segmenter is multi-level), SGD lr 2.5e-4, momentum 0.9, weight decay 5e-4, poly 0.9.
Published: 36.6 mIoU19 GTA5->Cityscapes (AdaptSegNet paper baseline, DeepLabV2-R101).
Target images are never forwarded, so BatchNorm statistics cannot silently adapt to the target.
"""
from __future__ import annotations

from dataclasses import dataclass

from udabench.method import Method, OptimConfig, StepOutput, cross_entropy
from udabench.registry import register_method


@dataclass
class SourceOnlyConfig(OptimConfig):
    aux_weight: float = 0.1  # weight of the auxiliary (layer3) head's loss when multi-level


def supervised_loss(method: Method, batch: dict, aux_weight: float) -> tuple:
    """CE on the main head (+ weighted aux head) for a labelled batch; returns (loss, logs)."""
    loss, logs, _ = supervised_loss_and_outputs(method, batch, aux_weight)
    return loss, logs


def supervised_loss_and_outputs(method: Method, batch: dict, aux_weight: float) -> tuple:
    """As ``supervised_loss``, also returning the segmenter's outputs (for methods that reuse them)."""
    out = method.segmenter(batch["image"].float().div(255.0))
    loss = cross_entropy(out["out"], batch["label"])
    logs = {"ce": float(loss.detach())}
    if out.get("aux") is not None and aux_weight > 0:
        aux = cross_entropy(out["aux"], batch["label"])
        loss = loss + aux_weight * aux
        logs["ce_aux"] = float(aux.detach())
    return loss, logs, out


@register_method("source-only")
class SourceOnly(Method):
    """Supervised on source only; the no-adaptation baseline (36.6 mIoU19 published)."""

    Config = SourceOnlyConfig
    uses_target = False

    def training_step(self, source: dict, target: dict, step: int) -> StepOutput:
        loss, logs = supervised_loss(self, source, self.cfg.aux_weight)
        return StepOutput({"model": loss}, logs)
