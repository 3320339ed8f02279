"""The method interface: the plug-in contract every UDA method implements (docs/extending.md).

A method is one class in one file, registered with ``@register_method("name")``, with a dataclass
of hyperparameters (``Config``) whose defaults are the published recipe. It is an ``nn.Module`` so
every network it owns (segmenter, discriminators, EMA teachers) is in its ``state_dict``; other
state (counters, rounds, memories) goes through ``get_extra_state``/``set_extra_state`` or buffers,
so resume is exact. The Trainer, not the method, runs backward, unscaling, clipping, gradient
reduction and optimiser steps, so AMP, DDP and gradient accumulation work for every method.

This module is the complete kit a method needs; a method file imports it (and torch), never
another method or the engine: supervised and ignore-safe losses, ``Method.segment`` (uint8 batch
-> logits, the one place images are scaled), upsampled probabilities and entropy maps,
pseudo-label rules, EMA teachers, the temporal ensemble, loading weights, and declared settings
(``setting``: each key's valid values, checked by one function with one error format).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from udabench.ensemble import MODES as ENSEMBLE_MODES, EnsembleLayout, TemporalEnsemble  # noqa: F401
from udabench.errors import ConfigError, DataError, UserError  # noqa: F401
from udabench.methodkit.losses import (IGNORE, ce_sum, cross_entropy, mixed_ce,  # noqa: F401
                                       multi_level_ce, normalised_entropy, self_information,
                                       supervised_loss, upsampled_probs)
from udabench.methodkit.pseudo import (ConfidenceCollector, batch_window_labels,  # noqa: F401
                                       ordered_loader, pseudo_labels, window_labels)
from udabench.methodkit.teacher import ema_alpha, ema_update, make_teacher  # noqa: F401
from udabench.methodkit.mean_teacher import (border_rows, confident_fraction,  # noqa: F401
                                             ema_update_parameters, pseudo_weight_map,
                                             set_teacher_mode, teacher_pseudo_labels,
                                             weighted_ce)
from udabench.methodkit.mixing import (blur_kernel_size, class_mix_batch,  # noqa: F401
                                       class_mix_masks, color_jitter, gaussian_blur,
                                       jitter_params, mix, strong_augment, unit_float)
from udabench.methodkit.masking import (block_mask, block_size, input_mean,  # noqa: F401
                                        mask_images, masked_consistency_loss)
from udabench.methodkit.fd import (THING_CLASSES, FrozenEncoder,  # noqa: F401
                                   downscale_label_ratio, thing_feature_distance)
from udabench.methodkit.rcs import RareClassSampler, rcs_class_probs  # noqa: F401
from udabench.methodkit.schedules import lr_factor, warmup_factor  # noqa: F401
from udabench.methodkit.network import missing_network  # noqa: F401
from udabench.methodkit.dacs_family import ClassMixTeacher  # noqa: F401
from udabench.seeding import sample_seed as hash_seed  # noqa: F401  (stable seeds from parts)
from udabench.methodkit.weights import load_segmenter_weights  # noqa: F401
from udabench.models.discriminator import Discriminator  # noqa: F401
from udabench.registry import register_method as _register_method
from udabench.settings import Allowed, Settings, setting  # noqa: F401


@dataclass
class OptimConfig(Settings):
    """The common optimisation of the DeepLabV2 era (docs/methods.md); method configs inherit it
    and set ``WHERE`` to their key prefix (``methods.<name>``)."""

    WHERE: ClassVar[str] = "methods"

    lr: float = setting(2.5e-4, gt=0, unit="rate", doc="learning rate of the segmenter's backbone")
    momentum: float = setting(0.9, ge=0, lt=1, doc="SGD momentum")
    weight_decay: float = setting(5e-4, ge=0)
    poly_power: float = setting(0.9, ge=0, doc="poly learning-rate decay power; 0 = constant")


@dataclass
class OptimizerSpec:
    """One optimiser a method asks for. ``param_groups`` carry an optional ``lr_mult``."""

    param_groups: list[dict[str, Any]]
    kind: str = "sgd"  # sgd | adam | adamw
    lr: float = 2.5e-4
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 5e-4  # a param group's own "weight_decay" wins (e.g. 0 on norms)
    poly_power: float = 0.9  # 0 = constant
    # mmcv's linear warm-up (DAFormer): lr x (1 - (1 - t/W)(1 - ratio)) for t < W, on top of poly
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6


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
    # The run this one started from (train.init_from: weights already loaded into the segmenter
    # before the method was built), e.g. a finished source-only run; None = model.init only.
    init_from: str | None = None
    source_size: int = 0  # images in the (labelled) source training set
    # scale -> the label-free target train split resized to scale x each image's full resolution
    # (for pseudo-labelling passes the published code runs at another size than training)
    target_view: Callable[[float], Dataset] | None = None
    # -> [source images, classes] labelled pixel counts at full resolution (the manifest's, or
    # counted once and cached in the run); for class-aware source sampling (DAFormer's RCS)
    source_class_counts: Callable[[], torch.Tensor] | None = None


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
    #: A method whose published protocol starts from a trained model of another method (CBST from
    #: source-only) names it here; the runner then starts it from the finished run of that method
    #: with the same benchmark, seed and network (``train.init_from``), making it first if needed.
    warm_start: ClassVar[str | None] = None

    def __init__(self, segmenter: nn.Module, cfg: Any, ctx: MethodContext):
        super().__init__()
        self.segmenter = segmenter
        self.cfg = cfg
        self.ctx = ctx

    # -- helpers for subclasses -------------------------------------------------------------------
    def segment(self, images: torch.Tensor, network: nn.Module | None = None) -> dict[str, Any]:
        """Run ``network`` (default: the segmenter) on a batch of images as the data layer gives
        them (uint8 RGB [B, 3, H, W]); the ONE place images become floats in [0, 1] (the model
        then applies the normalisation of its weights)."""
        net = self.segmenter if network is None else network
        if images.dtype == torch.uint8:
            images = images.float().div(255.0)
        return net(images)

    @property
    def feature_channels(self) -> int:
        """Channels of the segmenter's ``feat`` output (the features methods align)."""
        return int(self.segmenter.feature_channels)

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

    def source_sampler(self) -> Any:
        """None: source images in shuffled epochs. Else an object whose ``draw(n, generator)``
        returns (image indices [n], classes [n]): the trainer's source loader then loads those
        images, and each source sample carries ``sampled_class`` (rare class sampling)."""
        return None

    def eval_network(self) -> tuple[str, nn.Module]:
        """Which network is evaluated, and its name for the record. Student by default."""
        return "student", self.segmenter

    @classmethod
    def model_defaults(cls, cfg: Any) -> dict[str, Any]:
        """Segmenter settings this method's recipe needs (e.g. the multi-level head); applied
        before the user's [model] overrides, so a user can still change them."""
        return {}

    @classmethod
    def published_schedule(cls, cfg: Any, bench: Any) -> dict[str, int]:
        """The published schedule on a real benchmark: any of ``iters`` (where training stops),
        ``decay_iters`` (the poly horizon) and ``batch_size``; {} = the benchmark's defaults.
        ``bench.source_kind`` tells GTA5 from SYNTHIA. Not used on MiniCity (one budget)."""
        return {}

    @classmethod
    def check_plan(cls, cfg: Any, model: Any) -> None:
        """Refuse, before any work starts, a method config that cannot work with this segmenter
        config (raise ConfigError/UserError with one line)."""

    # -- description --------------------------------------------------------------------------
    @classmethod
    def describe_defaults(cls) -> str:
        cfg = cls.Config()
        parts = [f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)]
        return ", ".join(parts)



def register_method(name: str, description: str | None = None):
    """``@register_method("name")``: register a Method class; its Config's ``WHERE`` (the key
    prefix of error messages) becomes ``methods.<name>`` unless the config sets it (then it must
    agree, or the messages would name the wrong table)."""
    def decorator(cls: type) -> type:
        config, where = getattr(cls, "Config", None), f"methods.{name}"
        if config is not None and config is not OptimConfig:
            own = config.__dict__.get("WHERE")
            if own is None:
                config.WHERE = where
            elif own != where:
                raise ValueError(f"method '{name}': {config.__name__}.WHERE is '{own}', expected '{where}'")
        return _register_method(name, description)(cls)

    return decorator
