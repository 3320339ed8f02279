"""Scoring one 2048x1024 prediction/label pair on CPU: udabench vs torchmetrics vs numpy bincount.

Run: python bench/bench_scoring.py
Targets (issue 2): >= 20x faster than torchmetrics MulticlassJaccardIndex.update and >= 1.5x faster
than a numpy bincount reference with boolean masking, same data, same process.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time, machine_line  # noqa: E402

from udabench.metrics import confusion_matrix  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 19, (1024, 2048)).astype(np.uint8)
    label[rng.random(label.shape) < 0.1] = 255
    pred = rng.integers(0, 19, (1024, 2048)).astype(np.uint8)
    label_t, pred_t = torch.from_numpy(label), torch.from_numpy(pred)

    def numpy_reference():
        keep = label != 255
        return np.bincount(19 * label[keep].astype(np.int64) + pred[keep], minlength=361)

    def udabench():
        return confusion_matrix(pred_t, label_t)

    results = {"udabench": best_time(udabench), "numpy bincount (masked)": best_time(numpy_reference)}
    assert (udabench().numpy().ravel() == numpy_reference()).all()
    try:
        from torchmetrics.classification import MulticlassJaccardIndex

        metric = MulticlassJaccardIndex(num_classes=19, average="none", ignore_index=255)
        pred_l, label_l = pred_t.long(), label_t.long()
        results["torchmetrics update"] = best_time(lambda: metric.update(pred_l, label_l), 3, 1)
    except ImportError:
        print("torchmetrics not installed: pip install '.[test]' for that row")

    table = Table(title="Scoring one 2048x1024 pair on CPU")
    table.add_column("implementation")
    table.add_column("ms / image", justify="right")
    table.add_column("udabench speed-up", justify="right")
    for name, seconds in results.items():
        table.add_row(name, f"{seconds * 1e3:.2f}", f"{seconds / results['udabench']:.1f}x")
    console = Console()
    console.print(machine_line())
    console.print(table)


if __name__ == "__main__":
    main()
