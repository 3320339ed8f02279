"""Pretrain a MiniCity backbone on the third procedural domain and write its shipped weights.

Run:  python bench/pretrain_minicity.py --backbone resnet-tiny --out udabench/minicity/weights/
      python bench/pretrain_minicity.py --backbone mit-tiny --out udabench/minicity/weights/

Writes <out>/<backbone>.safetensors (the backbone body's state dict, a model.init weights file)
and <out>/<backbone>.json (sha256, this command, the generator key, every training setting, the
final train and held-out accuracy, wall and CPU time, library versions). One CPU thread by
default (OMP_NUM_THREADS=1 and torch threads 1): the weights are bit-reproducible with the same
command, library versions and thread count. --data-root keeps the rendered images under
<data_root>/minicity-pretrain/<key>/ for reruns (the result does not depend on it).
docs/minicity_pretraining.md describes the design.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

THREADS_DEFAULT = 1


def _threads_from_argv() -> int:
    """--threads, read before torch is imported (OMP_NUM_THREADS must be set before that)."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--threads=") else (
            argv[i + 1] if arg == "--threads" and i + 1 < len(argv) else None)
        if value is not None and value.isdigit() and int(value) > 0:
            return int(value)
    return THREADS_DEFAULT


os.environ["OMP_NUM_THREADS"] = str(_threads_from_argv())
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import platform  # noqa: E402

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

from udabench.errors import UserError  # noqa: E402
from udabench.minicity import pretrained  # noqa: E402
from udabench.minicity.pretrain import pretrain, recipe, write_weights  # noqa: E402

MAX_BYTES = 5 * 1024 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", required=True, help="a registered backbone (resnet-tiny, mit-tiny)")
    ap.add_argument("--out", required=True, type=Path, help="folder for the weights and sidecar")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    ap.add_argument("--task", default=None,
                    help="classification (one label per image, as ImageNet) or segmentation (every "
                         "pixel's class); default: the recipe's")
    ap.add_argument("--geometry", default=None,
                    help="standard (ResNets at output stride 32, as ImageNet classifiers) or segmenter "
                         "(the backbone as MiniCity's segmenter runs it); default: the recipe's")
    ap.add_argument("--threads", type=int, default=THREADS_DEFAULT, help="CPU threads (default 1)")
    ap.add_argument("--data-root", type=Path, default=None,
                    help="cache the rendered images under DATA_ROOT/minicity-pretrain/<key>/")
    return ap.parse_args(argv)


def command_line(args: argparse.Namespace) -> str:
    """The command that rebuilds these weights: every option that changes them."""
    out = str(args.out) + ("/" if not str(args.out).endswith("/") else "")
    parts = ["python", pretrained.SCRIPT, "--backbone", args.backbone, "--out", out]
    if args.seed != 0:
        parts += ["--seed", str(args.seed)]
    if args.steps is not None:
        parts += ["--steps", str(args.steps)]
    if args.lr is not None:
        parts += ["--lr", repr(args.lr)]
    if args.task is not None:
        parts += ["--task", args.task]
    if args.geometry is not None:
        parts += ["--geometry", args.geometry]
    if args.threads != THREADS_DEFAULT:
        parts += ["--threads", str(args.threads)]
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = {"seed": args.seed, **({"steps": args.steps} if args.steps is not None else {}),
                 **({"lr": args.lr} if args.lr is not None else {}),
                 **({"task": args.task} if args.task is not None else {}),
                 **({"geometry": args.geometry} if args.geometry is not None else {})}
    if args.steps is not None:
        overrides["warmup_steps"] = min(recipe(args.backbone).warmup_steps, args.steps)
    try:
        cfg = recipe(args.backbone, **overrides)
        args.out.mkdir(parents=True, exist_ok=True)
        if not os.access(args.out, os.W_OK):
            raise UserError(f"--out {args.out}: not writable; choose another folder")
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = pretrain(cfg, log=lambda msg: print(msg, flush=True), cache_root=args.data_root)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        from udabench.engine.rundir import git_revision

        extra = {"time": {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                          "data_seconds": round(result.data_seconds, 1),
                          "train_seconds": round(result.train_seconds, 1),
                          "threads": args.threads},
                 "environment": {"python": platform.python_version(), "torch": torch.__version__,
                                 "numpy": np.__version__, "timm": timm.__version__,
                                 "machine": platform.machine(), "git": git_revision()}}
        path, meta = write_weights(result, cfg, args.out, command_line(args), extra)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({meta['bytes'] / 1024:.0f} KiB, sha256 {meta['sha256'][:12]}...) and "
          f"{path.with_suffix('.json').name}")
    print(f"held-out accuracy {result.heldout_accuracy:.3f}, train accuracy "
          f"{result.train_accuracy:.3f}, wall {wall / 60:.1f} min, CPU {cpu / 60:.1f} min, "
          f"{args.threads} thread(s)")
    if meta["bytes"] > MAX_BYTES:
        print(f"error: {path} is over the 5 MB budget of shipped weights", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
