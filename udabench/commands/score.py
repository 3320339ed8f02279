"""``udabench score PRED_DIR --benchmark B``: score prediction PNGs made anywhere.

IoUs are printed in percent, like every udabench record; the protocol line says what was compared.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from udabench.errors import UserError
from udabench.scoring import ENCODINGS, ScoreResult, default_workers, find_ground_truth, score_predictions
from udabench.taxonomy import CLASS_NAMES, SUBSETS


def score_record(result: ScoreResult, bench: Any, pred_dir: Path) -> dict[str, Any]:
    """A result record (percent) with the protocol line; NaN becomes None so the JSON is strict."""

    def pct(v: float) -> float | None:
        return None if math.isnan(v) else v * 100

    s = result.score
    record = {
        "schema": 1, "kind": "score", "benchmark": bench.name, "spec_hash": bench.hash(),
        "subsets": list(result.subsets), "headline": result.subsets[0],
        "convention": result.convention,
        "miou": {k: pct(v) for k, v in s.miou.items()},
        "iou": {k: pct(v) for k, v in s.iou.items()},
        "pixel_accuracy": pct(s.pixel_accuracy), "pixels": s.pixels,
        "images": len(result.ids), "encoding": result.encoding, "predictions": str(pred_dir),
        "void_predictions": int(result.matrix[:, -1].sum()),
    }
    record["protocol"] = protocol(record, result.size)
    return record


def protocol(record: dict[str, Any], size: tuple[int, int] | None) -> str:
    res = f"all {size[1]}x{size[0]}" if size else "several sizes"
    return " | ".join([
        f"{record['benchmark']} (spec {record['spec_hash'][:8]})",
        f"classes {'/'.join(record['subsets'])}, convention {record['convention']}",
        f"{record['images']} predictions ({record['encoding']}) from {record['predictions']}",
        f"compared with each val label at its own size ({res}), one confusion matrix over all images",
        "inference settings unknown (made outside udabench)",
    ])


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def markdown(record: dict[str, Any]) -> str:
    subsets = record["subsets"]
    head = "| class | IoU | " + " | ".join(f"in {s}" for s in subsets) + " |"
    lines = [head, "|---|---:|" + ":---:|" * len(subsets)]
    for i, name in enumerate(CLASS_NAMES):
        marks = " | ".join("x" if i in SUBSETS[s] else "" for s in subsets)
        lines.append(f"| {name} | {_fmt(record['iou'][name])} | {marks} |")
    pad = " |" * len(subsets)
    for s in subsets:
        lines.append(f"| **mIoU{s}** | **{_fmt(record['miou'][s])}** |{pad}")
    lines.append(f"| pixel accuracy | {_fmt(record['pixel_accuracy'])} |{pad}")
    return "\n".join(lines) + f"\n\n{record['protocol']}\n"


@click.command("score")
@click.argument("pred_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--benchmark", "-b", required=True, help="benchmark whose val labels to compare with")
@click.option("--encoding", type=click.Choice(("auto",) + ENCODINGS), default="auto", show_default=True,
              help="trainid (0..18), labelid (the target's label ids: Cityscapes labelIds, as the "
                   "official evaluator takes) or color (official palette, RGB); 255 (black in "
                   "colour) means no class; auto decides when unambiguous")
@click.option("--per-image", "per_image", type=click.Path(path_type=Path, dir_okay=False),
              help="write per-image IoUs (percent) to this CSV file (never overwritten)")
@click.option("--format", "fmt", type=click.Choice(("rich", "markdown", "json")), default="rich",
              show_default=True)
@click.option("--root", type=click.Path(path_type=Path, file_okay=False),
              help="data root (default: [paths] data_root of udabench.toml or $UDABENCH_DATA)")
@click.option("--workers", type=click.IntRange(min=1), help="decoding threads (default: CPUs, at most 8)")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="settings file (default ./udabench.toml): data root and benchmark overrides")
def score(pred_dir: Path, benchmark: str, encoding: str, per_image: Path | None, fmt: str,
          root: Path | None, workers: int | None, config_file: Path | None) -> None:
    """Score one prediction PNG per validation image in PRED_DIR (flat or a mirrored tree).

    Files are matched by the Cityscapes stem <city>_<seq>_<frame>, whatever their suffix.
    """
    from udabench.config import load_config
    from udabench.registry import BENCHMARKS

    if per_image is not None and per_image.exists():
        raise UserError(f"--per-image {per_image} already exists; remove it or choose another file")
    err = Console(stderr=True)
    cfg = load_config(config_file)
    bench = BENCHMARKS.get(benchmark)
    overrides = cfg.benchmark_overrides(benchmark)
    if overrides:
        bench = bench.with_overrides(overrides)
    data_root = root if root is not None else Path(cfg.paths.data_root)
    if bench.minicity is not None:
        _, target_root = bench.roots(data_root, console=err)  # generated on first use
    else:  # scoring needs the target val labels only, not the source dataset roots() checks
        target_root = data_root / bench.target_subdir
    gt = find_ground_truth(target_root, "val", bench.target_kind)
    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("score", total=len(gt))
        result = score_predictions(pred_dir, gt, encoding, bench.subsets, bench.convention,
                                   workers or default_workers(),
                                   progress=lambda n: bar.advance(task, n), kind=bench.target_kind)
    record = score_record(result, bench, pred_dir)
    if per_image is not None:
        _write_csv(per_image, result)
    if fmt == "json":
        click.echo(json.dumps(record, indent=2, allow_nan=False))
    elif fmt == "markdown":
        click.echo(markdown(record))
    else:
        from udabench.report import result_table

        table = result_table(record, title=f"predictions in {pred_dir} on {bench.name}")
        table.caption = None  # printed on its own line: a caption wraps to the table's width
        out = Console()
        out.print(table)
        out.print(record["protocol"], highlight=False, soft_wrap=True)
    if per_image is not None and fmt != "json":
        err.print(f"per-image IoUs written to {per_image}", highlight=False)


def _write_csv(path: Path, result: ScoreResult) -> None:
    from udabench.data.pngio import atomic_write_bytes

    if path.exists():  # created while scoring
        raise UserError(f"--per-image {path} already exists; remove it or choose another file")
    atomic_write_bytes(path, result.per_image_frame().to_csv(index=False).encode())
