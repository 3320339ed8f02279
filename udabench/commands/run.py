"""``udabench run`` and ``udabench eval``."""
from __future__ import annotations

import dataclasses
import datetime as _dt
from pathlib import Path

import click
from rich.console import Console

from udabench.config import load_config
from udabench.errors import UserError

console = Console()


def parse_seeds(seed: int | None, seeds: str | None) -> list[int]:
    """--seed N or --seeds 0-2 / 0,3,5 (not both); default seed 0."""
    if seed is not None and seeds:
        raise UserError("give either --seed or --seeds, not both")
    if not seeds:
        return [0 if seed is None else seed]
    out: list[int] = []
    try:
        for part in seeds.split(","):
            lo, sep, hi = part.strip().partition("-")
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise UserError(f"--seeds {seeds!r}: expected a range like 0-2 or a list like 0,1,2") from None
    if not out or len(set(out)) != len(out) or min(out) < 0:
        raise UserError(f"--seeds {seeds!r}: expected distinct non-negative seeds")
    return out


@click.command("run")
@click.argument("method", required=False)
@click.option("--benchmark", "-b", help="benchmark protocol (see `udabench benchmarks`)")
@click.option("--seed", type=int, help="one seed (default 0)")
@click.option("--seeds", help="several seeds, e.g. 0-2 or 0,1,2 (one run each)")
@click.option("--iters", type=click.IntRange(min=1), help="training iterations (overrides train.iters)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override a setting, e.g. --set train.batch_size=4 --set methods.clst.w_cl=0.5")
@click.option("--resume", type=click.Path(path_type=Path), help="continue the run in this directory")
@click.option("--device", help="auto | cpu | cuda | cuda:N (overrides train.device)")
@click.option("--out", type=click.Path(path_type=Path), help="parent folder of the run directory")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="settings file (default ./udabench.toml)")
def run_cmd(method, benchmark, seed, seeds, iters, sets, resume, device, out, config_file) -> None:
    """Train METHOD on a benchmark, evaluate it, and write a run directory.

    Several GPUs: torchrun --nproc_per_node=N -m udabench run METHOD --benchmark B
    """
    from udabench.engine.devices import init_distributed, shared_run_dir
    from udabench.engine.runner import Run, new_run, open_run, resolve_plan
    from udabench.report import headline, result_table

    if resume is not None:
        if method or benchmark or seeds or iters or sets or out:
            raise UserError("--resume takes the settings saved in the run directory; drop the other options")
        plan, run_dir = open_run(resume)
        if run_dir.result_file.exists():
            raise UserError(f"{resume} has already finished (result.json exists); nothing to resume")
        if device:
            plan = dataclasses.replace(plan, train=dataclasses.replace(plan.train, device=device))
        plans = [(plan, run_dir)]
    else:
        if not method or not benchmark:
            raise UserError("usage: udabench run METHOD --benchmark B (see `udabench methods` and `udabench benchmarks`)")
        cfg = load_config(config_file, sets)
        train = cfg.train
        if iters:
            train = dataclasses.replace(train, iters=iters)
        if device:
            train = dataclasses.replace(train, device=device)
        plans = []
        for s in parse_seeds(seed, seeds):
            plan = resolve_plan(
                method, benchmark, s, train, cfg.model, cfg.method_overrides(method),
                cfg.benchmark_overrides(benchmark), cfg.paths.data_root, cfg.paths.output_dir,
            )
            plans.append((plan, None))
    rank, world, _ = init_distributed()
    records = []
    for plan, run_dir in plans:
        created = run_dir is None
        run_dir = shared_run_dir(run_dir or (new_run(plan, out) if rank == 0 else None), world)
        lock = run_dir.lock() if rank == 0 else None
        try:
            if rank == 0:
                console.print(f"[bold]{plan.method}[/] on [bold]{plan.benchmark}[/], seed {plan.seed}: {run_dir.path}")
            record = Run(plan, run_dir, console).execute(resume=resume is not None)
        except Exception:
            if created and rank == 0:
                lock.close()
                lock = None
                run_dir.discard_unstarted()
            raise
        finally:
            if lock is not None:
                lock.close()
        if rank == 0:
            console.print(result_table(record))
        records.append(record)
    if len(records) > 1 and rank == 0:
        for r in records:
            console.print(f"seed {r['seed']}: {headline(r)}  ({r['run_dir']})")


@click.command("eval")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--benchmark", "-b", help="evaluate on another benchmark than the run's own")
@click.option("--device", help="auto | cpu | cuda | cuda:N")
def eval_cmd(target: Path, benchmark: str | None, device: str | None) -> None:
    """Evaluate a run directory (or its checkpoints/last.pt) on a benchmark's validation set."""
    from udabench.engine.evaluate_run import evaluate_run
    from udabench.engine.rundir import write_json
    from udabench.report import result_table

    record, run_dir = evaluate_run(target, benchmark, device)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = run_dir.path / "evals"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{record['benchmark']}-{stamp}.json"
    write_json(path, record)
    console.print(result_table(record))
    console.print(f"written to {path}")
