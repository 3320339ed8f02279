"""How good are an online self-training method's pseudo-labels while it trains?

Methods with an EMA teacher: dacs, daformer (and MIC), self-training-online.

Run: python bench/teacher_quality.py daformer [--benchmark minicity-gta2cs --seed 0 --every 25
                                               --images 48 --set methods.daformer.mic=true]

Runs ``udabench run METHOD`` in this process (into a scratch folder, the default settings plus
``--set``) and, every ``--every`` steps, probes copies of the method's networks on the first
``--images`` *labelled* target train images at the training size (the run itself never sees those
labels; the probe works on deep copies, so the run trains exactly as it would without it):

- teacher: the pseudo-labels the method would make from them (``teacher_pseudo_labels`` with the
  method's threshold and teacher mode): confident share (the weight of every pseudo-labelled
  pixel), precision of the confident pixels, arg-max accuracy and mIoU over all labelled pixels;
- student, in eval mode (as it is scored): arg-max accuracy and mIoU.

For a method without a teacher (``source-only``) only the student is probed: the reference curve.
Used for issue 18's question why DAFormer and MIC fall below source-only on MiniCity (README).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

from udabench.cli import main as cli_main  # noqa: E402
from udabench.data.datasets import build_dataset  # noqa: E402
from udabench.data.transforms import ResizeImage, resize_label  # noqa: E402
from udabench.engine import runner  # noqa: E402
from udabench.method import teacher_pseudo_labels  # noqa: E402
from udabench.methodkit.mean_teacher import set_teacher_mode  # noqa: E402
from udabench.metrics import confusion_matrix, iou_from_matrix  # noqa: E402
from udabench.registry import METHODS  # noqa: E402


def probe_set(plan, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n target train images (uint8, training size) and their labels at that size."""
    bench = plan.bench()
    _, target_root = bench.roots(Path(plan.data_root), None)
    w, h = bench.target_train_size
    images = build_dataset(bench.target_kind, target_root, "train", with_labels=False,
                           transform=ResizeImage((h, w), bench.interpolation))
    truth = build_dataset(bench.target_kind, target_root, "train", with_labels=True)
    xs = torch.stack([images[i]["image"] for i in range(n)])
    ys = torch.stack([resize_label(truth[i]["label"], (h, w)) for i in range(n)])
    return xs, ys


def scores(pred: torch.Tensor, label: torch.Tensor, classes: int) -> tuple[float, float]:
    """(pixel accuracy, mIoU over the classes present in the labels or the prediction), in %."""
    m = confusion_matrix(pred.to(torch.uint8), label, classes).numpy()
    return 100 * np.trace(m) / max(m.sum(), 1), 100 * float(np.nanmean(iou_from_matrix(m)))


def upsampled(logits: torch.Tensor, size) -> torch.Tensor:
    return torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def probe(method, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> dict[str, float]:
    classes, size = method.ctx.num_classes, labels.shape[-2:]
    student = copy.deepcopy(method.segmenter).eval()
    pred = upsampled(method.segment(images, student)["out"], size).argmax(1)
    row = dict(zip(("student acc", "student mIoU"), scores(pred, labels, classes)))
    teacher = getattr(method, "teacher", None)
    if teacher is None:
        return row
    c = method.cfg
    # self-training-online has no teacher_mode setting: its teacher labels in eval mode
    mode = getattr(c, "teacher_mode", "eval")
    pseudo, confidence, shares = [], [], []
    for batch in images.split(batch_size):  # train-mode BatchNorm sees batches of the run's size
        # the pseudo-labels exactly as the method makes them (on a copy: train-mode BatchNorm
        # would move the teacher's running statistics) ...
        labels_b, share = teacher_pseudo_labels(method.segment, copy.deepcopy(teacher), batch,
                                                c.threshold, mode)
        # ... and the per-pixel confidence behind them (the same pass again)
        twin = copy.deepcopy(teacher)
        set_teacher_mode(twin, mode)
        conf_b, again = upsampled(method.segment(batch, twin)["out"], size).softmax(1).max(1)
        assert torch.equal(again.to(torch.uint8), labels_b), "the probe's pass differs from the method's"
        pseudo.append(labels_b)
        confidence.append(conf_b)
        shares.append(float(share) * len(batch))
    pseudo, confidence, share = torch.cat(pseudo), torch.cat(confidence), sum(shares) / len(images)
    labelled = labels != 255
    confident = confidence.ge(c.threshold) & labelled
    right = pseudo.eq(labels)
    row["confident %"] = 100 * float(share)
    row["precision of confident %"] = 100 * float((right & confident).sum()) / max(int(confident.sum()), 1)
    row["pseudo-label acc %"] = 100 * float((right & labelled).sum()) / max(int(labelled.sum()), 1)
    row["pseudo-label mIoU"] = scores(pseudo, labels, classes)[1]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method")
    ap.add_argument("--benchmark", default="minicity-gta2cs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=25, help="probe every N steps (and at step 1)")
    ap.add_argument("--images", type=int, default=48, help="labelled target train images probed")
    ap.add_argument("--set", action="append", default=[], dest="sets", help="KEY=VALUE, as udabench run")
    args = ap.parse_args()
    console = Console()
    console.print(machine_line())
    method_cls = METHODS.get(args.method)
    original, original_run = method_cls.training_step, runner.Run.__init__
    rows: list[tuple[int, dict[str, float]]] = []
    held: dict = {}

    def run_init(self, plan, *a, **k):  # keeps the plan: its benchmark and data folder
        held["plan"] = plan
        original_run(self, plan, *a, **k)

    def probed_step(self, source, target, step):
        if step == 0 or (step + 1) % args.every == 0:
            if "probe" not in held:
                held["probe"] = probe_set(held["plan"], args.images)
            rows.append((step + 1, probe(self, *held["probe"], len(target["image"]))))
        return original(self, source, target, step)

    method_cls.training_step, runner.Run.__init__ = probed_step, run_init
    with tempfile.TemporaryDirectory() as out:
        argv = ["run", args.method, "--benchmark", args.benchmark, "--seed", str(args.seed),
                "--out", out] + [x for s in args.sets for x in ("--set", s)]
        try:
            cli_main(argv, standalone_mode=False)
        finally:
            method_cls.training_step, runner.Run.__init__ = original, original_run
        (result,) = Path(out).glob("**/result.json")
        console.print(f"the run's own score: mIoU {json.loads(result.read_text())['miou']}")
    table = Table(title=f"{args.method} on {args.benchmark}, seed {args.seed}, {args.images} labelled "
                        f"target train images probed (before the step's update)", title_justify="left")
    table.add_column("step", justify="right")
    for key in rows[0][1]:
        table.add_column(key, justify="right")
    for step, row in rows:
        table.add_row(str(step), *(f"{v:.1f}" for v in row.values()))
    console.print(table)


if __name__ == "__main__":
    main()
