"""``udabench predict RUN`` (prediction PNGs) and ``udabench plot RUN [RUN_B]`` (charts)."""
from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from udabench.errors import UserError

console = Console()
err = Console(stderr=True)


@click.command("predict")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--images", multiple=True, metavar="ID",
              help="image ids (stems, or file names) to predict; repeat or comma-separate (default: all)")
@click.option("--limit", type=click.IntRange(min=1), help="only the first N (of all, or of --images)")
@click.option("--out", type=click.Path(path_type=Path),
              help="folder to create (default: <run>/predictions/<format>); never overwritten")
@click.option("--format", "fmt", type=click.Choice(("color", "cityscapes")), default="color", show_default=True,
              help="color: palette PNGs, overlays and side-by-side with the ground truth; "
                   "cityscapes: labelId PNGs <city>/<stem>.png for the official evaluator and server")
@click.option("--split", type=click.Choice(("val", "train")), default="val", show_default=True,
              help="target split (train has no labels: no side-by-side)")
@click.option("--device", help="auto | cpu | cuda | cuda:N (default: the run's train.device)")
def predict_cmd(run: Path, images: tuple[str, ...], limit: int | None, out: Path | None, fmt: str,
                split: str, device: str | None) -> None:
    """Write RUN's predictions on the benchmark's target images as PNGs."""
    from udabench.engine.runner import open_run
    from udabench.results.predict import check_out_dir, export_predictions, load_run, select

    if not Path(run).is_dir():
        raise UserError(f"{run} is not a run directory (expected runs/<benchmark>/<method>/<run-id>)")
    open_run(run)  # not a run directory: say so before building anything
    out = Path(out) if out is not None else Path(run) / "predictions" / fmt
    check_out_dir(out)
    loaded = load_run(run, device, err)
    dataset = loaded.dataset(split, err)
    indices = select(dataset.ids, images, limit, f"the {split} split of {loaded.bench.name}")
    columns = (TextColumn(f"predict ({fmt})"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("predict", total=len(indices))
        summary = export_predictions(loaded, dataset, indices, out, fmt,
                                     progress=lambda n: bar.advance(task, n))
    what = "Cityscapes labelIds" if fmt == "cityscapes" else "colour maps and overlays"
    console.print(f"wrote {summary.files} PNGs ({what}) for {summary.images} {split} images to {summary.out}",
                  highlight=False, soft_wrap=True)
    if fmt == "cityscapes" and split == "val" and summary.images == len(dataset):
        console.print(f"score them with: udabench score {summary.out} --benchmark {loaded.plan.benchmark} "
                      "--encoding labelid", highlight=False, soft_wrap=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def _resolve(tokens: tuple[str, ...], benchmark: str | None, output_dir: Path | None,
             config_file: Path | None) -> list[Any]:
    """Sides (udabench.results.select.Side) of run directories, run ids, names or method names."""
    from udabench.commands.results import resolve_sides

    return resolve_sides(tokens, benchmark, output_dir, config_file)


@click.command("plot")
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="file to write; .png, .pdf or .svg (default: <run>/plots/summary-<time>.png for one run, "
                   "else plot-<A>-vs-<B>....png here)")
@click.option("--size", type=click.Choice(["screen", "page", "column"]),
              help="screen: 1200 px, titled (PNG default); page: 7 in; column: 3.4 in, one paper column "
                   "(PDF/SVG default)")
@click.option("--overwrite", is_flag=True, help="replace --out if it exists (by default nothing is overwritten)")
@click.option("--benchmark", "-b", help="benchmark of method names (needed when a method ran on several)")
@click.option("--output-dir", "output_dir", type=click.Path(path_type=Path),
              help="folder holding the run directories and store.sqlite (default: paths.output_dir)")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="settings file (default ./udabench.toml)")
def plot_cmd(runs: tuple[str, ...], out: Path | None, size: str | None, overwrite: bool, benchmark: str | None,
             output_dir: Path | None, config_file: Path | None) -> None:
    """Charts (PNG, PDF or SVG): one run's per-class IoU and training curves, or per-class bars of several runs with error bars over seeds.

    The format follows the --out suffix. For two RUNs the chart adds A - B per class. A RUN is a
    run directory, run id, run name, method name or config hash prefix; names that fit several
    configurations are refused.
    """
    from udabench.results.pictures import chart_format, default_size, render, sides_figure, write_chart

    fmt = chart_format(out) if out is not None else "png"
    size = size or default_size(fmt)
    if out is not None and out.exists() and not overwrite:  # say so before reading anything
        raise UserError(f"{out} already exists; nothing was written (remove it, choose another --out, or --overwrite)")
    sides = _resolve(runs, benchmark, output_dir, config_file)
    fig, protocol = sides_figure([(s.label, s.records) for s in sides], size)
    if out is not None:
        target = out
    elif len(sides) == 1 and len(sides[0].records) == 1:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = Path(sides[0].records[0]["run_dir"]) / "plots" / f"summary-{stamp}.{fmt}"
    else:
        target = Path("plot-" + "-vs-".join(_slug(s.label) for s in sides) + f".{fmt}")
    path = write_chart(target, render(fig, fmt, protocol), overwrite)
    console.print(f"chart written to {path}", highlight=False, soft_wrap=True)
