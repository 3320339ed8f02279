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
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--images", multiple=True, metavar="ID",
              help="image ids (stems, or file names) to predict; repeat or comma-separate (default: all)")
@click.option("--limit", type=click.IntRange(min=1), help="only the first N (of all, or of --images)")
@click.option("--out", type=click.Path(path_type=Path),
              help="folder to create (default: <run>/predictions/<format>); never overwritten; "
                   "for panels a .png/.pdf/.svg file")
@click.option("--format", "fmt", type=click.Choice(("color", "cityscapes", "panels")), default="color",
              show_default=True,
              help="color: palette PNGs, overlays and side-by-side with the ground truth; "
                   "cityscapes: labelId PNGs <city>/<stem>.png for the official evaluator and server; "
                   "panels: one figure, image | ground truth | each RUN, titled, with a class legend")
@click.option("--size", type=click.Choice(("screen", "page", "column")), default="page", show_default=True,
              help="panels: figure width (page: 7 in, column: 3.4 in)")
@click.option("--overwrite", is_flag=True, help="panels: replace an existing figure file")
@click.option("--split", type=click.Choice(("val", "train")), default="val", show_default=True,
              help="target split (train has no labels: no side-by-side)")
@click.option("--device", help="auto | cpu | cuda | cuda:N (default: the run's train.device)")
def predict_cmd(runs: tuple[Path, ...], images: tuple[str, ...], limit: int | None, out: Path | None,
                fmt: str, size: str, overwrite: bool, split: str, device: str | None) -> None:
    """Write RUN's predictions on the benchmark's target images as PNGs."""
    from udabench.engine.runner import open_run
    from udabench.results.predict import check_out_dir, export_predictions, load_run, select

    for run in runs:
        if not Path(run).is_dir():
            raise UserError(f"{run} is not a run directory (expected runs/<benchmark>/<method>/<run-id>)")
        open_run(run)  # not a run directory: say so before building anything
    if fmt == "panels":
        return _panels(runs, images, limit or 4, out, size, overwrite, split, device)
    if len(runs) > 1:
        raise UserError(f"--format {fmt} writes one run's files; several runs side by side: --format panels")
    run = runs[0]
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


def _panel_title(run: Path, plan: Any) -> str:
    """``name`` or method, and the run's headline mIoU when it has finished."""
    import json

    label = plan.name or plan.method
    result = Path(run) / "result.json"
    if result.is_file():
        rec = json.loads(result.read_text())
        head = rec.get("headline") or rec["subsets"][0]
        value = (rec.get("miou") or {}).get(head)
        if isinstance(value, (int, float)):
            label += f" ({value:.1f})"
    return label


def _panels(runs: tuple[Path, ...], images: tuple[str, ...], limit: int, out: Path | None, size: str,
            overwrite: bool, split: str, device: str | None) -> None:
    """image | ground truth | each run's prediction, for the same images of one protocol."""
    import torch
    import torch.nn.functional as F

    from udabench.engine.evaluator import predict
    from udabench.results.panels import PanelRow, panels_chart
    from udabench.results.pictures import chart_format, write_chart
    from udabench.results.predict import load_run, select

    loaded = [load_run(run, device, err) for run in runs]
    specs = {(r.bench.name, r.bench.hash()) for r in loaded}
    if len(specs) > 1:
        raise UserError("panels put runs side by side on the same images: these runs are on "
                        f"{len(specs)} protocols ({', '.join(sorted(f'{b} {h}' for b, h in specs))})")
    out = Path(out) if out is not None else Path(runs[0]) / "predictions" / "panels.png"
    fmt = chart_format(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; nothing was overwritten (--overwrite replaces it)")
    dataset = loaded[0].dataset(split, err)
    indices = select(dataset.ids, images, limit, f"the {split} split of {loaded[0].bench.name}")
    rows = []
    for i in indices:
        sample = dataset[i]
        label = sample.get("label")
        if label is None:
            from udabench.data.pngio import read_png_info

            info = read_png_info(dataset.pairs[i].image)
            size_hw = (info.height, info.width)
        else:
            size_hw = tuple(label.shape[-2:])
        preds = [predict(r.net, sample["image"][None].to(r.device), size_hw, r.settings,
                         r.amp_dtype)[0].cpu().numpy() for r in loaded]
        image = F.interpolate(sample["image"][None].float(), size=size_hw, mode="bilinear",
                              align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        rows.append(PanelRow(sample["id"], image.permute(1, 2, 0).numpy(),
                             None if label is None else label.numpy(), preds))
    titles = [_panel_title(run, r.plan) for run, r in zip(runs, loaded)]
    subset = loaded[0].bench.subsets[0]
    data = panels_chart(rows, titles, fmt, subset, size,
                        description=f"{loaded[0].bench.name}: {', '.join(titles)}")
    path = write_chart(out, data, overwrite=overwrite)
    console.print(f"wrote {path} ({len(rows)} images x {len(runs)} runs)", highlight=False, soft_wrap=True)


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
