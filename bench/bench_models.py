"""Training-step time of segmenters on a MiniCity batch, as ratios to resnet-tiny + aspp.

Run: python bench/bench_models.py [--batch 8] [--size 128 256] [--rounds 7] [--threads N]
One step = forward, cross-entropy on logits upsampled to the input, backward, SGD step, on a
MiniCity-sized batch (8 x 3 x 128 x 256, 19 classes), all in this process. The networks are timed
in turns, round after round, and each keeps its best round: on a shared machine, load that comes
and goes then hits every network alike. Target (issue 18): the MiniCity MiT variant (mit-tiny)
costs about what resnet-tiny does (ratio ~1).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import time

from common import machine_line  # noqa: E402

from udabench.models import SegmenterConfig, build_segmenter  # noqa: E402

CONFIGS = [
    ("resnet-tiny + aspp (MiniCity default)", dict(backbone="resnet-tiny")),
    ("mit-tiny + aspp", dict(backbone="mit-tiny")),
    ("mit-tiny + daformer, head_channels 32", dict(backbone="mit-tiny", head="daformer", head_channels=32)),
    ("mit-tiny + daformer, head_channels 64", dict(backbone="mit-tiny", head="daformer", head_channels=64)),
    ("resnet-tiny + daformer, head_channels 32", dict(backbone="resnet-tiny", head="daformer", head_channels=32)),
]


def step_fn(seg: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor):
    opt = torch.optim.SGD(seg.param_groups(0.01), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        logits = F.interpolate(seg(images)["out"], size=labels.shape[-2:], mode="bilinear",
                               align_corners=False)
        F.cross_entropy(logits, labels, ignore_index=255).backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    console.print(machine_line())
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, *args.size, generator=g)
    labels = torch.randint(0, 19, (args.batch, *args.size), generator=g)
    table = Table(title=f"training step, batch {args.batch} at {args.size[0]}x{args.size[1]}")
    for col in ("network", "parameters", "output stride", "ms / step", "vs resnet-tiny"):
        table.add_column(col, justify="right")
    nets, steps = [], []
    for name, kw in CONFIGS:
        torch.manual_seed(0)
        seg = build_segmenter(SegmenterConfig(init="scratch", **kw), num_classes=19).train()
        nets.append(seg)
        steps.append(step_fn(seg, images, labels))
        steps[-1]()  # warm-up
    best = [float("inf")] * len(steps)
    for _ in range(args.rounds):
        for i, step in enumerate(steps):
            t0 = time.perf_counter()
            step()
            best[i] = min(best[i], time.perf_counter() - t0)
    for (name, _), seg, seconds in zip(CONFIGS, nets, best):
        stride = args.size[0] / seg.feature_size(*args.size)[0]
        params = sum(p.numel() for p in seg.parameters())
        table.add_row(name, f"{params / 1e6:.2f}M", f"{stride:g}", f"{seconds * 1e3:.0f}",
                      f"{seconds / best[0]:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
