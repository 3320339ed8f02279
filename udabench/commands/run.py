"""``udabench run`` and ``udabench eval``."""
from __future__ import annotations

import dataclasses
import datetime as _dt
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from udabench.config import load_config
from udabench.errors import ConfigError, UserError

console = Console()


def parse_seeds(seed: int | None, seeds: str | None) -> list[int]:
    """--seed N or --seeds 0-2 / 0,3,5 (not both); default seed 0."""
    if seed is not None and seeds:
        raise UserError("give either --seed or --seeds, not both")
    if not seeds:
        if seed is not None and seed < 0:
            raise UserError(f"--seed {seed}: expected a non-negative integer")
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


def plans_from_options(method, benchmark, seed, seeds, train_over, sets, config_file, out, name,
                       tags, from_run):
    """The resolved plans of a new ``run`` invocation (one per seed), with their settings' origins."""
    from udabench.config import TrainConfig
    from udabench.engine.plan import resolve_plan
    from udabench.engine.runner import open_run

    if from_run is not None:
        base, _ = open_run(from_run)
        if seed is None and not seeds:
            seed = base.seed
        method = method or base.method
        benchmark = benchmark or base.benchmark
        if (method, benchmark) != (base.method, base.benchmark):
            raise UserError(f"--from {from_run} is a {base.method} run on {base.benchmark}; "
                            "drop METHOD/--benchmark or give that run's")
    if not method or not benchmark:
        raise UserError("usage: udabench run METHOD --benchmark B (see `udabench methods` and "
                        "`udabench benchmarks`)")
    cfg = load_config(config_file, sets)
    train = dataclasses.replace(cfg.train, **train_over)
    model, method_over, bench_over = cfg.model, cfg.method_overrides(method), cfg.benchmark_overrides(benchmark)
    if from_run is not None:  # the earlier run's resolved settings, then this invocation's changes
        # (a settings file that spells out a default, like the shipped `iters = 0`, changes nothing)
        changed = {k: getattr(cfg.train, k) for k in _explicit(cfg, "train")
                   if getattr(cfg.train, k) != getattr(TrainConfig(), k)}
        train = dataclasses.replace(base.train, **{**changed, **train_over})
        model = {**dataclasses.asdict(base.model), **model}
        method_over = {**base.method_config, **method_over}
        bench_over = {**base.benchmark_overrides, **bench_over}
        name = name or base.name
        tags = tags or tuple(base.tags)
    output_dir = Path(out).expanduser().resolve() if out else cfg.paths.output_dir
    origins = dict(cfg.origins)
    for key in train_over:
        origins[f"train.{key}"] = f"--{key}"
    plans = []
    for s in parse_seeds(seed, seeds):
        try:
            plans.append(resolve_plan(method, benchmark, s, train, model, method_over, bench_over,
                                      cfg.paths.data_root, output_dir, name=name, tags=tags,
                                      origins=origins, spelled=cfg.spelled,
                                      manifests=cfg.paths.manifests))
        except ConfigError as exc:
            raise cfg.blame(exc) from None
    return plans


def _explicit(cfg: Any, section: str) -> list[str]:
    """Keys of a section the user set (file or --set) in this invocation."""
    return [k.split(".", 1)[1] for k in cfg.origins if k.startswith(section + ".") and k.count(".") == 1]


NETWORK_KEYS = ("backbone", "init", "aspp_branches", "multi_level", "head", "head_channels")


def warm_start_source(plan: Any) -> Any | None:
    """The plan of the run this plan's method starts from, when its protocol starts from another
    method's trained model (CBST from source-only) and ``train.init_from`` is left empty; else None.

    The source is the run of that method with the same benchmark, seed, network and training
    settings. "Same network" = the same architecture and initial weights; how BatchNorm is run and
    the head's learning rate are the warm-start method's own training choices. `udabench run` and
    the sweep's "is this run done?" both ask this one function, so they cannot disagree."""
    from udabench.engine.plan import resolve_plan
    from udabench.registry import METHODS

    warm = METHODS.get(plan.method).warm_start
    if plan.train.init_from != "" or not warm:
        return None
    network = {k: v for k, v in dataclasses.asdict(plan.model).items() if k in NETWORK_KEYS}
    return resolve_plan(warm, plan.benchmark, plan.seed,
                        dataclasses.replace(plan.train, init_from="none"),
                        network, {}, plan.benchmark_overrides,
                        Path(plan.data_root), Path(plan.output_dir), manifests=plan.manifests)


def with_init_from(plan: Any, make_warm_start, announce: bool = True) -> Any:
    """Resolve ``train.init_from`` (or the method's published warm start) into the plan: the
    finished source run when there is one, else ``make_warm_start(source plan)``'s run."""
    from udabench.engine.plan import find_finished, resolve_init_from

    token = plan.train.init_from
    src = warm_start_source(plan)
    if src is not None:
        found = find_finished(src)
        if found is None:
            if announce:
                console.print(f"{plan.method} starts from a finished {src.method} run of "
                              f"{plan.benchmark}, seed {plan.seed}, same network; none found: making "
                              f"it first (train.init_from=none starts from model.init instead)")
            found = make_warm_start(src)
        elif announce:
            console.print(f"{plan.method} starts from the finished {src.method} run {found}")
        token = str(found)
    init = resolve_init_from(token, Path(plan.output_dir))
    return dataclasses.replace(plan, init_from=init)


def execute_new(plan: Any, rank: int, world: int) -> dict[str, Any]:
    """Make the run directory, train, evaluate, index; a run that fails before training leaves
    no run directory behind."""
    from udabench.engine.devices import shared_run_dir
    from udabench.engine.runner import Run, new_run
    from udabench.report import result_table

    run_dir = shared_run_dir(new_run(plan) if rank == 0 else None, world)
    lock = run_dir.lock() if rank == 0 else None
    try:
        if rank == 0:
            label = f" \\[{escape(plan.name)}]" if plan.name else ""  # rich would eat [name]
            console.print(f"[bold]{plan.method}[/]{label} on [bold]{plan.benchmark}[/], seed {plan.seed}: "
                          f"{escape(str(run_dir.path))}")
        record = Run(plan, run_dir, console).execute(resume=False)
    except Exception:
        if rank == 0:
            lock.close()
            lock = None
            run_dir.discard_unstarted()
        raise
    finally:
        if lock is not None:
            lock.close()
    if rank == 0:
        console.print(result_table(record))
    return record


@click.command("run")
@click.argument("method", required=False)
@click.option("--benchmark", "-b", help="benchmark protocol (see `udabench benchmarks`)")
@click.option("--seed", type=int, help="one seed (default 0)")
@click.option("--seeds", help="several seeds, e.g. 0-2 or 0,1,2 (one run each)")
@click.option("--iters", type=int, help="training iterations (overrides train.iters)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override a setting, e.g. --set train.batch_size=4 --set methods.clst.w_cl=0.5")
@click.option("--resume", type=click.Path(path_type=Path), help="continue the run in this directory")
@click.option("--from", "from_run", type=click.Path(path_type=Path),
              help="start a new run with the resolved settings of this run directory (change them with --set/--seed)")
@click.option("--device", help="auto | cpu | cuda | cuda:N (overrides train.device)")
@click.option("--out", type=click.Path(path_type=Path),
              help="output folder (paths.output_dir): runs go to OUT/<benchmark>/<method>/<run-id>, indexed in OUT/store.sqlite")
@click.option("--name", help="a name for the run(s), shown by runs/leaderboard/compare and usable to select them")
@click.option("--tag", "tags", multiple=True, help="a tag (repeatable)")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="settings file (default ./udabench.toml)")
def run_cmd(method, benchmark, seed, seeds, iters, sets, resume, from_run, device, out, name, tags,
            config_file) -> None:
    """Train METHOD on a benchmark, evaluate it, and write a run directory.

    Several GPUs: torchrun --nproc_per_node=N -m udabench run METHOD --benchmark B
    """
    from udabench.engine.devices import init_distributed
    from udabench.engine.plan import preflight
    from udabench.engine.runner import Run, open_run
    from udabench.report import headline, result_table

    if resume is not None:
        if method or benchmark or seeds or iters or sets or out or from_run or name or tags:
            raise UserError("--resume takes the settings saved in the run directory; drop the other options")
        plan, run_dir = open_run(resume)
        if run_dir.result_file.exists():
            raise UserError(f"{resume} has already finished (result.json exists); nothing to resume")
        if device:
            plan = dataclasses.replace(plan, train=dataclasses.replace(plan.train, device=device))
        rank, world, _ = init_distributed()
        preflight(plan, world)
        lock = run_dir.lock() if rank == 0 else None
        try:
            record = Run(plan, run_dir, console).execute(resume=True)
        finally:
            if lock is not None:
                lock.close()
        if rank == 0:
            console.print(result_table(record))
        return

    if iters is not None and iters < 1:
        raise UserError(f"--iters {iters}: expected a positive number of iterations")
    train_over = {k: v for k, v in (("iters", iters), ("device", device)) if v is not None}
    plans = plans_from_options(method, benchmark, seed, seeds, train_over, sets, config_file, out,
                               name, tags, from_run)
    rank, world, _ = init_distributed()
    for plan in plans:  # every check before the first run starts
        preflight(plan, world)

    def warm_start(src):
        preflight(src, world)
        return Path(execute_new(with_init_from(src, warm_start), rank, world)["run_dir"])

    records = [execute_new(with_init_from(plan, warm_start), rank, world) for plan in plans]
    if len(records) > 1 and rank == 0:
        for r in records:
            console.print(f"seed {r['seed']}: {headline(r)}  ({r['run_dir']})")


@click.command("eval")
@click.argument("target", type=click.Path(path_type=Path), required=False)
@click.option("--checkpoint", help="of a run: last (default), best or iter_N; without a run: a weights "
                                   "file (udabench or DeepLabV2 release) to score on --benchmark")
@click.option("--benchmark", "-b", help="evaluate on another benchmark than the run's own (required "
                                        "for a weights file)")
@click.option("--format", "fmt", type=click.Choice(["auto", "udabench", "deeplab"]), default="auto",
              show_default=True, help="layout of a weights file (docs/results.md)")
@click.option("--set", "sets", multiple=True, metavar="model.KEY=VALUE",
              help="network of a weights file, e.g. --set model.backbone=resnet101 --set model.multi_level=true")
@click.option("--name", help="name of a weights file's result (default: the file name)")
@click.option("--device", help="auto | cpu | cuda | cuda:N")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="settings file (default ./udabench.toml)")
def eval_cmd(target: Path | None, checkpoint: str | None, benchmark: str | None, fmt: str,
             sets: tuple[str, ...], name: str | None, device: str | None, config_file: Path | None) -> None:
    """Evaluate a run (any of its checkpoints) or a weights file on a benchmark's validation set."""
    from udabench.engine.rundir import write_json
    from udabench.report import result_table

    if target is None:  # weights trained anywhere
        if not checkpoint or not benchmark:
            raise UserError("udabench eval needs a run directory, or --checkpoint FILE --benchmark B")
        from udabench.engine.external import evaluate_external
        from udabench.results.store import index_run, store_path

        for item in sets:
            key, _, _ = item.partition("=")
            if not key.startswith("model."):
                raise UserError(f"--set {item!r}: eval of a weights file takes model.* settings only")
        cfg = load_config(config_file, sets)
        model = dict(cfg.model)
        record, run_dir = evaluate_external(Path(checkpoint), benchmark, model, fmt, name, device,
                                            cfg.paths.output_dir, cfg.paths.data_root, console,
                                            cfg.benchmark_overrides(benchmark))
        index_run(store_path(cfg.paths.output_dir), run_dir.path)
        console.print(result_table(record))
        console.print(f"external weights ({record['external_weights']['format']}, sha256 "
                      f"{record['external_weights']['sha256'][:12]}): {run_dir.path}")
        return
    if sets or name or fmt != "auto":
        raise UserError("--set/--name/--format describe a weights file; a run directory has its own settings")
    from udabench.engine.evaluate_run import evaluate_run

    record, run_dir = evaluate_run(target, benchmark, device, which=checkpoint)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = run_dir.path / "evals"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{record['benchmark']}-{Path(record['eval']['checkpoint'].split()[0]).name}-{stamp}.json"
    write_json(path, record)
    console.print(result_table(record))
    if record["eval"]["checkpoint"].startswith("best"):
        console.print("[yellow]note:[/] best.pt was chosen on the validation labels (model selection on "
                      "the test set): report it as such, never beside last-checkpoint results")
    console.print(f"written to {path}")
