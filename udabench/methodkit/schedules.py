"""Learning-rate schedules of the mmcv runner the DAFormer family trains with.

DAFormer's ``configs/_base_/schedules/poly10warm.py``: poly decay with power 1.0 to 0 over the run,
by iteration, and a linear warm-up over the first 1,500 iterations with ``warmup_ratio`` 1e-6.
mmcv's ``PolyLrUpdaterHook`` + ``get_warmup_lr('linear')``: at iteration t < warm-up iterations W,
lr = poly_lr(t) x (1 - (1 - t / W)(1 - ratio)); afterwards lr = poly_lr(t).
"""
from __future__ import annotations


def poly_factor(step: int, horizon: int, power: float) -> float:
    """(1 - step/horizon)^power (mmcv poly with min_lr 0); power 0 = constant."""
    if power == 0:
        return 1.0
    return max(0.0, 1.0 - step / max(1, horizon)) ** power


def warmup_factor(step: int, warmup_iters: int, warmup_ratio: float) -> float:
    """mmcv linear warm-up: 1 - (1 - step/W)(1 - ratio) for step < W, else 1."""
    if warmup_iters <= 0 or step >= warmup_iters:
        return 1.0
    return 1.0 - (1.0 - step / warmup_iters) * (1.0 - warmup_ratio)


def lr_factor(step: int, horizon: int, power: float, warmup_iters: int = 0,
              warmup_ratio: float = 1e-6) -> float:
    """What the base learning rate is multiplied by at ``step`` (0-based)."""
    return poly_factor(step, horizon, power) * warmup_factor(step, warmup_iters, warmup_ratio)
