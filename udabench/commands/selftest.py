"""``udabench selftest``: every method at the real protocols' sizes on this machine, before any
dataset is downloaded (docs/selftest.md)."""
from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console

console = Console()
err = Console(stderr=True)


@click.command("selftest")
@click.option("--benchmark", "benchmarks", multiple=True, default=("all",), show_default=True,
              help="gta2cs, synthia2cs or all (repeat or comma-separate)")
@click.option("--methods", "methods", multiple=True, default=("all",), show_default=True,
              metavar="NAME,...|all", help="methods to run (see `udabench methods`)")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--iters", type=int, default=10, show_default=True,
              help="training iterations per method (the first fifth is warm-up, not timed)")
@click.option("--backbone", help="segmenter backbone (default: the configured one, resnet101)")
@click.option("--amp", type=click.Choice(("auto", "off", "bf16", "fp16")), default="auto",
              show_default=True, help="mixed precision (auto: bf16 on CUDA, off on the CPU)")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the segmenter")
@click.option("--profile/--no-profile", default=None,
              help="also compare source-only fp32 vs AMP images/s (default: on CUDA only)")
@click.option("--format", "fmt", type=click.Choice(("rich", "json")), default="rich",
              show_default=True, help="a table, or JSON (schema in docs/selftest.md)")
@click.option("--keep", type=click.Path(path_type=Path),
              help="write the dataset tree and the runs into this new folder and keep them "
                   "(default: a temporary folder, removed at the end)")
@click.option("--images", type=click.IntRange(min=2), default=8, show_default=True,
              help="images per source dataset and Cityscapes train (val gets half, at least 1)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override a setting as in `udabench run`, e.g. --set model.init=/path/r101.pth")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="settings file (default ./udabench.toml)")
@click.option("--print-schema", is_flag=True, help="print the JSON Schema of --format json and exit")
def selftest_cmd(benchmarks, methods, device, iters, backbone, amp, compile_, profile, fmt, keep,
                 images, sets, config_file, print_schema) -> None:
    """Run every method at the real protocols' sizes on generated data, and time it."""
    from udabench.selftest.driver import run_selftest
    from udabench.selftest.plan import SelftestOptions
    from udabench.selftest.report import SCHEMA, render
    from udabench.selftest.tree import TreeSpec

    if print_schema:
        click.echo(json.dumps(SCHEMA, indent=2))
        return
    opts = SelftestOptions(
        benchmarks=tuple(benchmarks), methods=tuple(methods), device=device, iters=iters,
        backbone=backbone, amp=amp, compile=compile_, profile=profile, keep=keep,
        config_file=config_file, sets=tuple(sets),
        tree=TreeSpec(n_source=images, n_target_train=images, n_val=max(1, images // 2)),
        progress=fmt == "rich" and console.is_terminal,
    )
    report = run_selftest(opts, err, lambda line: err.print(line, highlight=False, soft_wrap=True,
                                                            markup=False))
    if fmt == "json":
        click.echo(json.dumps(report, indent=2, allow_nan=False))
    else:  # a log file or a pipe has no width: do not squeeze 11 columns into 80 characters
        out = console if console.is_terminal else Console(width=max(console.width, 170))
        out.print(render(report))
    if not report["ok"]:
        raise SystemExit(1)

