"""How good were a self-training run's pseudo-labels? Per round: labelled share, pixel precision,
and per class precision and share, against the target's true train labels.

Run: python bench/pseudo_label_quality.py RUN_DIR [--classes 6]
Only for benchmarks whose target train labels exist on disk (MiniCity has them; on Cityscapes the
train labels are the oracle's). It reads the round files the `self-training` method keeps under
RUN_DIR/state/ and never touches the run. Used to explain why CBST-style self-training loses to
source-only on MiniCity (docs/minicity.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from udabench import taxonomy
from udabench.data.datasets import build_dataset
from udabench.data.transforms import resize_label
from udabench.engine.runner import open_run


def round_confusions(run: Path) -> list[tuple[float, np.ndarray]]:
    """(labelled share, confusion matrix true x pseudo over labelled pixels) for each round."""
    plan, _ = open_run(run)
    bench = plan.bench()
    _, target_root = bench.roots(Path(plan.data_root), None)
    truth = build_dataset(bench.target_kind, target_root, "train", with_labels=True)
    files = sorted((run / "state").glob("self_training_round*.npy"),
                   key=lambda p: int(p.stem.removeprefix("self_training_round")))
    if not files:
        raise SystemExit(f"{run}/state holds no self_training_round*.npy: not a self-training run")
    c = bench.num_classes
    out = []
    for path in files:
        labels = np.load(path, mmap_mode="r")
        n, h, w = labels.shape
        conf = np.zeros(c * c, np.int64)
        labelled = 0
        for i in range(n):
            gt = resize_label(truth[i]["label"], (h, w)).numpy().astype(np.int64)
            pl = labels[i].astype(np.int64)
            labelled += int((pl != 255).sum())
            keep = (pl != 255) & (gt != 255)
            conf += np.bincount(gt[keep] * c + pl[keep], minlength=c * c)
        out.append((labelled / (n * h * w), conf.reshape(c, c)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--classes", type=int, default=6, help="classes listed per round (most pseudo-labels)")
    args = ap.parse_args()
    console = Console()
    names = [cls.name for cls in taxonomy.CLASSES]
    for k, (labelled, conf) in enumerate(round_confusions(args.run)):
        given, true = conf.sum(0), conf.sum(1)
        precision = np.diag(conf) / np.maximum(given, 1)
        table = Table(title=f"round {k}: {labelled:.1%} of pixels labelled, pixel precision "
                            f"{np.trace(conf) / max(conf.sum(), 1):.1%}", title_justify="left")
        for col in ("class", "share of pseudo-labels", "true share (same pixels)", "precision"):
            table.add_column(col, justify="right")
        for i in np.argsort(-given)[: args.classes]:
            table.add_row(names[i], f"{given[i] / conf.sum():.1%}", f"{true[i] / conf.sum():.1%}",
                          f"{precision[i]:.1%}")
        console.print(table)


if __name__ == "__main__":
    main()
