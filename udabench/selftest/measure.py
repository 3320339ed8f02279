"""From a probed run (per-step times, result.json, metrics.jsonl) to the figures the selftest prints.

s/iter is the median step time after the warm-up steps (the first steps pay for allocator growth,
cuDNN autotuning, ``torch.compile`` and worker start-up). The projection of the published schedule
is ``planned iterations x s/iter + 500 x eval s/image`` (500: the protocol's validation set,
Cityscapes val); it leaves
out what a few steps cannot show: periodic checkpoints and the whole-set pseudo-labelling passes
of round-based methods (``self-training`` labels every target training image once per round).
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from udabench.selftest.probes import StepTimes

# The input pipeline is called the bottleneck when steps wait for data this share of their time.
INPUT_BOUND_FRACTION = 0.10


def warmup_steps(iters: int) -> int:
    """Steps left out of the medians: a fifth of the run, at least one."""
    return max(1, iters // 5)


@dataclass
class StepFigures:
    measured_steps: int
    s_per_iter: float
    data_s_per_step: float
    data_fraction: float
    ensemble_io_s_per_step: float | None  # None when no ensemble call happened (not CLST)
    ensemble_io_fraction: float | None
    ensemble_calls_per_step: float


def step_figures(steps: list[StepTimes], warmup: int) -> StepFigures:
    """Medians and shares over the steps after ``warmup`` (all steps if there are no others)."""
    if not steps:
        raise ValueError("no training step was timed")
    kept = steps[warmup:] or steps
    total = sum(s.seconds for s in kept)
    data = sum(s.data for s in kept)
    io = sum(s.ensemble_write + s.ensemble_read for s in kept)
    calls = sum(s.ensemble_calls for s in kept)
    has_io = any(s.ensemble_calls for s in kept)
    return StepFigures(
        measured_steps=len(kept),
        s_per_iter=statistics.median(s.seconds for s in kept),
        data_s_per_step=data / len(kept),
        data_fraction=data / total if total > 0 else math.nan,
        ensemble_io_s_per_step=io / len(kept) if has_io else None,
        ensemble_io_fraction=(io / total if total > 0 else math.nan) if has_io else None,
        ensemble_calls_per_step=calls / len(kept),
    )


def images_per_step(record: dict[str, Any]) -> float:
    """Training images (all domains) per optimiser step, from the run's own count."""
    compute = record["compute"]
    seen = compute["images_per_second"] * compute["train_seconds"]
    return seen / max(1, int(record["iters"]))


def eval_seconds_per_image(record: dict[str, Any]) -> float:
    return record["compute"]["eval_seconds"] / max(1, int(record["eval"]["images"]))


def projected_seconds(planned_iters: int, s_per_iter: float, eval_s_per_image: float,
                      val_images: int) -> float:
    """The published schedule's training plus one evaluation of the protocol's validation set."""
    return planned_iters * s_per_iter + val_images * eval_s_per_image


@dataclass
class LossLog:
    last: dict[str, float]  # each loss's value at the last logged step
    finite: bool  # every logged loss of every step is finite
    steps: int  # training log lines read


def read_losses(metrics_file: Path) -> LossLog:
    """The ``loss/*`` entries of a run's metrics.jsonl (one line per logged step)."""
    last: dict[str, float] = {}
    finite, steps = True, 0
    if not Path(metrics_file).is_file():
        return LossLog({}, False, 0)
    for line in Path(metrics_file).read_text().splitlines():
        entry = json.loads(line)
        losses = {k[len("loss/"):]: float(v) for k, v in entry.items() if k.startswith("loss/")}
        if not losses:
            continue  # an evaluation line
        steps += 1
        finite = finite and all(math.isfinite(v) for v in losses.values())
        last.update(losses)
    return LossLog(last, finite and steps > 0, steps)
