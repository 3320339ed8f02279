"""DACS, DAFormer and MIC step time against source-only, same process, MiniCity sizes.

Run: python bench/bench_modern_methods.py [--threads 2] [--height 128 --width 256 --batch 4]

One step = the method's training_step (its own crops/flips, teacher pass, ClassMix, jitter, blur,
feature distance, masked pass), backward and the optimiser step, on uint8 batches of MiniCity's
training size (256x128, batch 4 per domain as bench_clst.py). Each row's ratio is against
source-only on the same network. What the costs come from: DACS = 1 extra student pass (mixed)
+ 1 teacher pass (no grad) + augmentation; MIC adds one more student pass; DAFormer's feature
distance adds a frozen encoder pass on the source. DAFormer's optimiser is AdamW as published
(built here directly: the trainer's AdamW and warm-up are an engine request).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

from udabench.engine.trainer import build_optimizer  # noqa: E402
from udabench.method import MethodContext, OptimizerSpec  # noqa: E402
from udabench.methods.dacs import DACS, DACSConfig  # noqa: E402
from udabench.methods.daformer import DAFormer, DAFormerConfig  # noqa: E402
from udabench.methods.source_only import SourceOnly, SourceOnlyConfig  # noqa: E402
from udabench.models import SegmenterConfig, build_segmenter  # noqa: E402

KINDS = ("source-only", "dacs", "dacs+mic", "daformer", "daformer+mic")
NETWORKS = {
    "resnet-tiny + aspp": {"backbone": "resnet-tiny", "head": "aspp", "aspp_branches": 2},
    "mit-tiny + daformer(64)": {"backbone": "mit-tiny", "head": "daformer", "head_channels": 64},
}


def batches(step: int, b: int, h: int, w: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(step)
    src = {"image": torch.randint(0, 255, (b, 3, h, w), generator=g, dtype=torch.uint8),
           "label": torch.randint(0, 19, (b, h, w), generator=g, dtype=torch.uint8)}
    tgt = {"image": torch.randint(0, 255, (b, 3, h, w), generator=g, dtype=torch.uint8)}
    return src, tgt


def optimizer(spec: OptimizerSpec) -> torch.optim.Optimizer:
    if spec.kind != "adamw":
        return build_optimizer(spec)
    groups = [{k: v for k, v in g.items() if k not in ("lr_mult", "name")} for g in spec.param_groups]
    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)


def stepper(method, b: int, h: int, w: int):
    opt = optimizer(method.optimizers()["model"])
    counter = [0]

    def step():
        src, tgt = batches(counter[0] % 4, b, h, w)
        method.before_step(counter[0])
        opt.zero_grad(set_to_none=True)
        out = method.training_step(src, tgt, counter[0])
        out.losses["model"].backward()
        opt.step()
        method.after_step(counter[0])
        counter[0] += 1
    return step


def build(kind: str, model: dict, tmp: Path):
    torch.manual_seed(0)
    seg = build_segmenter(SegmenterConfig(init="scratch", **model), 19)
    ctx = MethodContext(19, torch.device("cpu"), 0, 100, 4, None, tmp)
    if kind == "source-only":
        return SourceOnly(seg, SourceOnlyConfig(), ctx)
    if kind.startswith("dacs"):
        return DACS(seg, DACSConfig(mic=kind.endswith("mic")), ctx)
    # all strategies but rare class sampling (a loader hook: it changes which images load, not
    # the step) and the warm-up (a learning-rate factor)
    cfg = DAFormerConfig(rcs=False, warmup_iters=0, mic=kind.endswith("mic"))
    return DAFormer(seg, cfg, ctx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    console.print(machine_line())
    console.print(f"batch {args.batch} + {args.batch}, {args.height}x{args.width} (HxW), "
                  f"best of {args.repeat} interleaved rounds of 2 steps")
    table = Table("network", "method", "s / step", "x source-only")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for net, model in NETWORKS.items():
            steps = {kind: stepper(build(kind, model, Path(tmp)), args.batch, args.height, args.width)
                     for kind in KINDS}
            for step in steps.values():  # warm-up
                step()
            # Interleaved rounds, best per method: a busy machine slows every method alike.
            best = dict.fromkeys(KINDS, float("inf"))
            for _ in range(args.repeat):
                for kind, step in steps.items():
                    t0 = time.perf_counter()
                    step()
                    step()
                    best[kind] = min(best[kind], (time.perf_counter() - t0) / 2)
            for kind in KINDS:
                table.add_row(net, kind, f"{best[kind]:.3f}", f"{best[kind] / best['source-only']:.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
