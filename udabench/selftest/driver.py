"""The selftest from options to a report: plan, write the tree, check it, run every method, measure.

Every method runs through the code path of ``udabench run``: its plan comes from the ``run``
command's own ``plans_from_options`` (the selftest's settings are ``--set`` items added to the
user's, merged into ``udabench.toml`` by ``load_config``), then ``preflight``, ``with_init_from``
(a method that starts from another's finished run, as CBST from source-only, gets it found or made
first), ``new_run`` and ``Run(plan, run_dir).execute()``: train, evaluate, result.json. Then the
predictions are exported in Cityscapes labelId format, as ``udabench predict --format cityscapes``
does, and re-scored by ``udabench score``'s scorer, which must give result.json's IoUs. Every
setting is resolved before anything is written, so a bad one fails at once; after that, one
method failing never stops the others.
"""
from __future__ import annotations

import contextlib
import gc
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from udabench.config import DATA_ENV
from udabench.engine.devices import amp_settings, runs_nhwc
from udabench.engine.plan import RunPlan, preflight
from udabench.engine.runner import Run, new_run
from udabench.engine.trainer import Interrupted
from udabench.errors import UserError
from udabench.registry import BENCHMARKS, METHODS
from udabench.selftest import measure
from udabench.selftest.datacheck import check_tree
from udabench.selftest.plan import (Job, Log, SelftestOptions, Setup, one_line, own_data_root,
                                    plan_selftest)
from udabench.selftest.probes import StepProbe, memory_kind, peak_memory, reset_peak_memory
from udabench.selftest.tree import write_tree
from udabench.taxonomy import CLASS_NAMES

# Row fields filled in by a finished run (report.SCHEMA lists every field of a row).
MEASURED = ("peak_memory_bytes", "s_per_iter", "images_per_step", "train_images_per_s",
            "eval_s_per_image", "eval_images", "eval_input_size", "projected_hours",
            "data_s_per_step", "data_fraction", "input_bound", "ensemble_io_s_per_step",
            "ensemble_io_fraction", "losses", "losses_finite", "miou", "spec_hash", "export",
            "wall_seconds")


# -- one method ------------------------------------------------------------------------------------
class _Refused(UserError):
    """`udabench run` refused to plan this method (the message is the plan's error)."""


def _effective(plan: RunPlan, device: torch.device) -> tuple[str, bool, bool]:
    """(amp, channels_last, compile) as the runner applies them on this device."""
    dtype, _ = amp_settings(plan.train.amp, device)
    amp = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "off") if dtype else "off"
    return amp, runs_nhwc(plan.train.channels_last, device), bool(plan.train.compile)


def export_and_rescore(run_path: Path, plan: RunPlan, record: dict[str, Any], device: str
                       ) -> dict[str, Any]:
    """labelId PNGs of the val set (``udabench predict --format cityscapes``), re-scored by
    ``udabench score``'s scorer; ``rescore_matches``: equal to result.json's IoUs."""
    from udabench.results.predict import export_predictions, load_run
    from udabench.scoring import score_predictions

    loaded = load_run(run_path, device)
    dataset = loaded.dataset("val")
    out = run_path / "predictions" / "cityscapes"
    start = time.perf_counter()
    summary = export_predictions(loaded, dataset, list(range(len(dataset))), out, "cityscapes")
    seconds = time.perf_counter() - start
    bench = plan.bench()
    _, target_root = bench.roots(Path(plan.data_root))
    scored = score_predictions(out, target_root, encoding="labelid", subsets=tuple(bench.subsets),
                               convention=bench.convention, workers=1)
    worst = 0.0
    for name in CLASS_NAMES:
        ours, theirs = scored.score.iou[name] * 100, record["iou"][name]
        if math.isnan(ours) != math.isnan(theirs):
            worst = math.inf
        elif not math.isnan(ours):
            worst = max(worst, abs(ours - theirs))
    return {"dir": str(out), "images": summary.images, "seconds_per_image": seconds / summary.images,
            "label_size": list(scored.size) if scored.size else None,
            "rescore_max_iou_difference": worst, "rescore_matches": worst <= 1e-6}


def _execute(plan: RunPlan, run_dir: Any, setup: Setup, probe: StepProbe) -> dict[str, Any]:
    """``Run(plan, run_dir).execute()`` with the run directory locked, as ``udabench run`` does,
    inside the probe; the run's loaders are stopped afterwards (see probes.py)."""
    lock = run_dir.lock()
    try:
        with probe:
            return Run(plan, run_dir, setup.console).execute(progress=setup.options.progress)
    finally:
        probe.close_loaders()
        lock.close()


def _start(plan: RunPlan, setup: Setup) -> RunPlan:
    """``preflight``, then ``train.init_from`` resolved by ``udabench run``'s ``with_init_from``:
    a method that starts from another method's finished run gets it found, or made first."""
    from udabench.commands.run import with_init_from

    def warm_start(src: RunPlan) -> Path:
        src = _start(src, setup)
        setup.log(f"  {plan.method} starts from a {src.method} run: making it first")
        run_dir = new_run(src)
        _execute(src, run_dir, setup, StepProbe(setup.device))
        return run_dir.path

    preflight(plan)
    with contextlib.redirect_stdout(sys.stderr):  # `run` prints its warm-start notes on stdout
        return with_init_from(plan, warm_start)


def run_job(job: Job, setup: Setup, log: Log, export: bool = True) -> dict[str, Any]:
    """Run one method; returns its result row (status failed with the cause on any error)."""
    plan, device = job.plan, setup.device
    opts = setup.options
    amp, channels_last, compiled = _effective(plan, device) if plan else \
        (setup.amp_mode, False, opts.compile)
    row: dict[str, Any] = {
        "benchmark": job.benchmark, "method": job.method, "status": "failed", "error": job.error,
        "run_dir": None, "iters": opts.iters, "batch_size": plan and plan.train.batch_size,
        "warmup_steps": measure.warmup_steps(opts.iters), "measured_steps": 0,
        "amp": amp, "channels_last": channels_last, "compile": compiled,
        "backbone": plan and plan.model.backbone, "init": plan and plan.model.init,
        "init_from": None, "planned_iters": job.planned_iters,
        **dict.fromkeys(MEASURED),  # null until measured (a failed method keeps the nulls)
    }
    started = time.perf_counter()
    row["memory_kind"] = memory_kind(device, True)
    run_dir = None
    try:
        if plan is None:
            raise _Refused(job.error or "no plan")
        plan = _start(plan, setup)
        if plan.init_from:
            row["init_from"] = plan.init_from.get("run_id") or plan.init_from["checkpoint"]
        started = time.perf_counter()  # a warm-start run made first is not this method's time
        row["memory_kind"] = memory_kind(device, reset_peak_memory(device))
        run_dir = new_run(plan)
        row["run_dir"] = str(run_dir.path)
        probe = StepProbe(device)
        record = _execute(plan, run_dir, setup, probe)
        row["peak_memory_bytes"] = peak_memory(device)
        losses = measure.read_losses(run_dir.metrics_file)
        steps = measure.step_figures(probe.steps, row["warmup_steps"])
        per_step = measure.images_per_step(record)
        eval_s = measure.eval_seconds_per_image(record)
        projected = measure.projected_seconds(job.planned_iters, steps.s_per_iter, eval_s,
                                              job.planned_val_images)
        row.update({
            "measured_steps": steps.measured_steps, "s_per_iter": steps.s_per_iter,
            "images_per_step": per_step, "train_images_per_s": per_step / steps.s_per_iter,
            "eval_s_per_image": eval_s, "eval_images": int(record["eval"]["images"]),
            "eval_input_size": list(record["eval"]["input_size"]),
            "projected_hours": projected / 3600,
            "data_s_per_step": steps.data_s_per_step, "data_fraction": steps.data_fraction,
            "input_bound": steps.data_fraction > measure.INPUT_BOUND_FRACTION,
            "ensemble_io_s_per_step": steps.ensemble_io_s_per_step,
            "ensemble_io_fraction": steps.ensemble_io_fraction,
            "losses": losses.last, "losses_finite": losses.finite,
            "miou": record["miou"], "spec_hash": record["spec_hash"],
        })
        if not losses.finite:
            raise RuntimeError(f"non-finite or missing losses in {run_dir.metrics_file}")
        if export:
            row["export"] = export_and_rescore(run_dir.path, plan, record, plan.train.device)
            if not row["export"]["rescore_matches"]:
                raise RuntimeError(
                    f"exported labelIds re-score {row['export']['rescore_max_iou_difference']:.3g} "
                    f"IoU points away from result.json")
        row["status"] = "ok"
    except (Interrupted, KeyboardInterrupt):
        raise
    except Exception as exc:  # one method's failure is reported, the others still run
        row["error"] = one_line(exc)
        if row["peak_memory_bytes"] is None and run_dir is not None:  # a run had started
            row["peak_memory_bytes"] = peak_memory(device)
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # Checkpoints are the bulk of the disk use; a run another method may start from
        # (``warm_start``, found by ``with_init_from``) keeps its own.
        sources = {METHODS.get(j.method).warm_start for j in setup.jobs}
        if run_dir is not None and not setup.keep and job.method not in sources:
            shutil.rmtree(run_dir.path / "checkpoints", ignore_errors=True)
            shutil.rmtree(run_dir.scratch, ignore_errors=True)
    row["wall_seconds"] = time.perf_counter() - started
    log(f"{job.benchmark} {job.method}: {row['status']}"
        + (f" ({row['error']})" if row["error"] else f", {row['s_per_iter']:.3g} s/iter"))
    return row


def amp_comparison(setup: Setup, rows: list[dict[str, Any]], log: Log) -> dict[str, Any]:
    """source-only images/s, fp32 vs AMP (+ channels_last on CUDA), in this process."""
    out: dict[str, Any] = {"benchmark": setup.amp_jobs["fp32"].benchmark, "method": "source-only",
                           "device": setup.device.type, "status": "ok", "error": None}
    for name, job in setup.amp_jobs.items():
        key = _effective(job.plan, setup.device) if job.plan else None
        reuse = next((r for r in rows if r["benchmark"] == job.benchmark and r["method"] == job.method
                      and r["status"] == "ok" and (r["amp"], r["channels_last"], r["compile"]) == key),
                     None)
        row = reuse or run_job(job, setup, log, export=False)
        out[name] = {"amp": row["amp"], "channels_last": row["channels_last"],
                     "compile": row["compile"], "status": row["status"], "error": row["error"],
                     "s_per_iter": row.get("s_per_iter"),
                     "train_images_per_s": row.get("train_images_per_s"),
                     "run_dir": row["run_dir"], "reused": reuse is not None}
    fp32, amp = out["fp32"], out["amp"]
    failed = [f"{n}: {out[n]['error']}" for n in ("fp32", "amp") if out[n]["status"] != "ok"]
    if failed:
        out.update(status="failed", error="; ".join(failed), speedup=None)
    else:
        out["speedup"] = amp["train_images_per_s"] / fp32["train_images_per_s"]
    return out


# -- the whole selftest -----------------------------------------------------------------------------
def run_selftest(opts: SelftestOptions, console: Any, log: Log) -> dict[str, Any]:
    """Plan, write and check the tree, run every job, and return the report (see report.py)."""
    keep = opts.keep is not None
    if keep:
        work = Path(opts.keep).expanduser().resolve()
        if work.exists() and (not work.is_dir() or any(work.iterdir())):
            raise UserError(f"--keep {opts.keep}: exists and is not an empty folder; nothing was "
                            "written (give a new or empty folder)")
    else:
        work = Path(tempfile.mkdtemp(prefix="udabench-selftest-"))
    try:
        # every bad option and setting fails here, before anything is written
        setup = plan_selftest(opts, work)
    except BaseException:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        raise
    work.mkdir(parents=True, exist_ok=True)  # (already there when random weights were written)
    setup.keep, setup.console, setup.log = keep, console, log
    started = time.perf_counter()
    try:
        with own_data_root() as env:
            if env:
                log(f"{DATA_ENV} is ignored: the selftest reads the tree it writes")
            return _run(setup, work, started)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _run(setup: Setup, work: Path, started: float) -> dict[str, Any]:
    """Write and check the tree, run the jobs (and the AMP comparison), build the report."""
    from udabench.selftest.report import build_report

    opts, log = setup.options, setup.log
    roots: dict[str, Path] = {}
    for job in setup.jobs + list(setup.amp_jobs.values()):
        bench = job.plan.bench() if job.plan else BENCHMARKS.get(job.benchmark)
        roots[bench.source_kind] = work / "data" / bench.source_subdir
        roots[bench.target_kind] = work / "data" / bench.target_subdir
    log(f"writing the dataset tree under {work / 'data'}")
    tree = write_tree(roots, opts.tree, progress=lambda what: log(f"  {what}"))
    data = check_tree(tree, work / "prepared" / "gta5")
    log("data checks: " + ("ok" if data["ok"] else "; ".join(data["problems"])))
    rows = [run_job(job, setup, log) for job in setup.jobs]
    profile = amp_comparison(setup, rows, log) if setup.amp_jobs else None
    return build_report(setup, data, rows, profile, time.perf_counter() - started)
