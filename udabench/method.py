"""The method interface: the plug-in contract every UDA method implements (design.md).

A method is one class in one file, registered with ``@register_method("name")``, with a dataclass
of hyperparameters (``Config``) whose defaults are the published recipe. It is an ``nn.Module`` so
every network it owns (segmenter, discriminators, EMA teachers) is in its ``state_dict``; other
state (counters, rounds, memories) goes through ``get_extra_state``/``set_extra_state`` or buffers,
so resume is exact. The Trainer, not the method, runs backward, unscaling, clipping, gradient
reduction and optimiser steps, so AMP, DDP and gradient accumulation work for every method.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset


@dataclass
class OptimConfig:
    """The common optimisation of the DeepLabV2 era (methods.md); method configs inherit it."""

    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9  # 0 = constant learning rate


@dataclass
class OptimizerSpec:
    """One optimiser a method asks for. ``param_groups`` carry an optional ``lr_mult``."""

    param_groups: list[dict[str, Any]]
    kind: str = "sgd"  # sgd | adam
    lr: float = 2.5e-4
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 5e-4
    poly_power: float = 0.9  # 0 = constant


@dataclass
class MethodContext:
    """What a method may know about the run. Note what is absent: target labels."""

    num_classes: int
    device: torch.device
    seed: int
    total_iters: int
    target_train_size: int
    # Label-free view of the target train split at the training resolution (no augmentation),
    # for round-based pseudo-labelling; samples have image/id/index, never a label.
    target_images: Dataset | None
    scratch_dir: Path  # file-backed state lives here (inside the run directory)
    rank: int = 0
    world_size: int = 1
    amp_dtype: torch.dtype | None = None


@dataclass
class StepOutput:
    """Losses keyed by optimiser name (each backpropagated into that optimiser's parameters only)."""

    losses: dict[str, torch.Tensor]
    logs: dict[str, float] = field(default_factory=dict)


class Method(nn.Module):
    """Base class. Subclasses set ``Config`` and implement ``training_step``."""

    Config: ClassVar[type] = OptimConfig
    #: True only for the oracle bound: its "source" batches are the labelled target train split,
    #: and every table labels such runs as not UDA.
    uses_target_labels: ClassVar[bool] = False
    #: False when training_step ignores the target batch (the trainer then loads none).
    uses_target: ClassVar[bool] = True

    def __init__(self, segmenter: nn.Module, cfg: Any, ctx: MethodContext):
        super().__init__()
        self.segmenter = segmenter
        self.cfg = cfg
        self.ctx = ctx

    # -- what the trainer asks ----------------------------------------------------------------
    def optimizers(self) -> dict[str, OptimizerSpec]:
        """Default: one SGD over the segmenter with its head at a higher learning rate."""
        c = self.cfg
        return {
            "model": OptimizerSpec(
                self.segmenter.param_groups(c.lr),
                kind="sgd",
                lr=c.lr,
                momentum=c.momentum,
                weight_decay=c.weight_decay,
                poly_power=c.poly_power,
            )
        }

    def training_step(self, source: dict, target: dict, step: int) -> StepOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement training_step")

    def before_step(self, step: int) -> None:
        """Called before each optimiser step's micro-batches (e.g. a pseudo-label round starts)."""

    def after_step(self, step: int) -> None:
        """Called after the optimiser steps (e.g. EMA teacher update)."""

    def eval_network(self) -> tuple[str, nn.Module]:
        """Which network is evaluated, and its name for the record. Student by default."""
        return "student", self.segmenter

    @classmethod
    def model_defaults(cls, cfg: Any) -> dict[str, Any]:
        """Segmenter settings this method's recipe needs (e.g. the multi-level head); applied
        before the user's [model] overrides, so a user can still change them."""
        return {}

    # -- description --------------------------------------------------------------------------
    @classmethod
    def describe_defaults(cls) -> str:
        cfg = cls.Config()
        parts = [f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)]
        return ", ".join(parts)


def cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Segmentation CE with logits upsampled to the label size, ignoring 255."""
    if logits.shape[-2:] != label.shape[-2:]:
        logits = nn.functional.interpolate(
            logits, size=label.shape[-2:], mode="bilinear", align_corners=False
        )
    return nn.functional.cross_entropy(logits.float(), label.long(), ignore_index=255)
