"""``udabench eval``: re-evaluate a finished or interrupted run from its last checkpoint."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from udabench.engine.checkpoint import load_checkpoint
from udabench.engine.devices import amp_settings, lay_out, place
from udabench.engine.evaluator import EvalSettings, evaluate
from udabench.engine.rundir import RunDir
from udabench.engine.plan import data_root_of
from udabench.engine.runner import build_method, data_splits, open_run
from udabench.errors import UserError
from udabench.registry import BENCHMARKS, METHODS


def _run_dir_of(target: Path) -> Path:
    target = Path(target)
    if target.is_file() and target.parent.name == "checkpoints":
        return target.parent.parent
    if target.is_dir():
        return target
    raise UserError(f"{target} is neither a run directory nor a run's checkpoints/*.pt file")


@dataclass
class Restored:
    """A run's method rebuilt from its config and loaded from a checkpoint, ready to predict."""

    plan: Any
    run_dir: RunDir
    bench: Any
    method: Any
    step: int
    checkpoint: Path
    device: torch.device
    amp_dtype: torch.dtype | None
    settings: EvalSettings


BEST_LABEL = "best (target-label model selection)"


def checkpoint_of(run_dir: RunDir, which: str | None) -> Path:
    """``last`` (default), ``best`` (kept with train.best_checkpoint), ``iter_N``, or a file."""
    if which in (None, "", "last"):
        return run_dir.checkpoint
    if which == "best":
        return run_dir.best_checkpoint
    if which.startswith("iter_") and which[5:].isdigit():
        return run_dir.checkpoint_at(int(which[5:]))
    raise UserError(f"--checkpoint {which!r}: expected last, best or iter_N for a run directory "
                    "(or a weights file with --benchmark and no run directory)")


def checkpoint_label(path: Path) -> str:
    """How a result names the checkpoint it scored; best.pt is model selection on target labels."""
    return BEST_LABEL if path.name == "best.pt" else path.stem


def restore(target: Path, device: str | None = None, console: Console | None = None,
            which: str | None = None) -> Restored:
    """Rebuild the method of a run directory (or of one of its checkpoints) and load its weights."""
    plan, run_dir = open_run(_run_dir_of(target))
    checkpoint = Path(target) if Path(target).is_file() else checkpoint_of(run_dir, which)
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint} does not exist; the run has no checkpoint yet")
    from udabench.data.manifest import configure_manifests

    configure_manifests(plan.manifests)
    placement = place(device or plan.train.device)
    amp_dtype, _ = amp_settings(plan.train.amp, placement.device)
    bench = plan.bench()
    sets = data_splits(bench, data_root_of(plan), False, console)
    method, _ = build_method(plan, bench, sets, placement, run_dir.scratch, amp_dtype)
    state = load_checkpoint(checkpoint, map_location=placement.device)
    if "method" not in state or state.get("method_name", plan.method) != plan.method:
        raise UserError(f"{checkpoint} is not a checkpoint of this run's method '{plan.method}'")
    try:
        method.load_state_dict(state["method"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"{checkpoint} does not fit the run's network ({first[:200]})") from None
    lay_out(method, plan.train.channels_last, placement.device)  # as the run's own evaluations
    settings = EvalSettings((bench.eval_input_size[1], bench.eval_input_size[0]), bench.align_corners,
                            plan.train.eval_flip, tuple(plan.train.eval_scales))
    return Restored(plan, run_dir, bench, method, int(state.get("step", 0)), checkpoint,
                    placement.device, amp_dtype, settings)


def evaluate_run(target: Path, benchmark: str | None = None, device: str | None = None,
                 console: Console | None = None, which: str | None = None
                 ) -> tuple[dict[str, Any], RunDir]:
    r = restore(target, device, console, which)
    plan, run_dir, own = r.plan, r.run_dir, r.bench
    bench = BENCHMARKS.get(benchmark) if benchmark else own
    if bench.num_classes != own.num_classes:
        raise UserError(f"{plan.benchmark} has {own.num_classes} classes, {bench.name} {bench.num_classes}")
    # The method is always built on its own benchmark (its state, e.g. CLST's ensemble, has that
    # shape); only the validation set comes from the benchmark asked for.
    val = data_splits(bench, data_root_of(plan), False, console).target_val
    settings = EvalSettings((bench.eval_input_size[1], bench.eval_input_size[0]), bench.align_corners,
                            plan.train.eval_flip, tuple(plan.train.eval_scales))
    network, net = r.method.eval_network()
    result = evaluate(net, val, settings, r.device, r.amp_dtype, 0, 1, plan.train.num_workers)
    score = result.score(bench.subsets, bench.convention)
    checkpoint, state = r.checkpoint, {"step": r.step}
    record = {
        "schema": 1, "run_id": run_dir.path.name, "run_dir": str(run_dir.path),
        "method": plan.method, "uda": not METHODS.get(plan.method).uses_target_labels,
        "benchmark": bench.name, "trained_on": plan.benchmark, "spec_hash": bench.hash(),
        "seed": plan.seed, "iters": int(state.get("step", 0)), "subsets": list(bench.subsets),
        "headline": bench.subsets[0], "convention": score.convention,
        "miou": {k: v * 100 for k, v in score.miou.items()},
        "iou": {k: v * 100 for k, v in score.iou.items()},
        "pixel_accuracy": score.pixel_accuracy * 100,
        "eval": {**settings.describe(), "network": network, "checkpoint": checkpoint_label(checkpoint),
                 "images": len(result.ids)},
    }
    return record, run_dir
