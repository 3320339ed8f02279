"""Speed of ``udabench score``'s library: 500 Cityscapes-size (2048x1024) labelId predictions.

Run: python bench/bench_score.py [--images 500] [--workers N] [--size 2048x1024]
Target (issue 8): 500 images scored well under a minute on 2 cores. The tree (random labelId
ground truth and predictions, the worst case for PNG decoding) is generated in a temp dir first;
only the scoring is timed. Also prints the 1-worker rate, measured in the same process, and the CPU
time per image (which a busy machine does not inflate).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

from udabench.data.pngio import write_png  # noqa: E402
from udabench.scoring import default_workers, score_predictions  # noqa: E402

CITIES = ("frankfurt", "lindau", "munster")


def make_tree(root: Path, n: int, h: int, w: int) -> None:
    """gtFine/val/<city>/<stem>_gtFine_labelIds.png and pred/<stem>_leftImg8bit.png (labelIds)."""

    def one(i: int) -> None:
        rng = np.random.default_rng(i)
        city = CITIES[i % 3]
        stem = f"{city}_{i:06d}_000019"
        gt = rng.integers(0, 34, (1, h, w), dtype=np.uint8)
        pred = np.where(rng.random((1, h, w)) < 0.6, gt, rng.integers(0, 34, (1, h, w))).astype(np.uint8)
        write_png(root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", torch.from_numpy(gt))
        write_png(root / "pred" / f"{stem}_leftImg8bit.png", torch.from_numpy(pred))

    with ThreadPoolExecutor(default_workers()) as pool:
        list(pool.map(one, range(n)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--size", default="2048x1024", help="WxH")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        make_tree(root, args.images, h, w)
        print(f"generated {args.images} pairs at {w}x{h} in {time.perf_counter() - t0:.1f} s")
        timings = {}
        for workers in sorted({1, args.workers}, reverse=True):
            t0, c0 = time.perf_counter(), time.process_time()
            result = score_predictions(root / "pred", root, encoding="labelid", workers=workers)
            timings[workers] = time.perf_counter() - t0
            cpu_ms = (time.process_time() - c0) / args.images * 1000
            print(f"workers {workers}: {timings[workers]:.1f} s total, "
                  f"{args.images / timings[workers]:.1f} images/s, CPU {cpu_ms:.0f} ms per image "
                  f"(2 idle cores: {cpu_ms * 500 / 2000:.1f} s per 500), "
                  f"mIoU19 {result.score.miou['19'] * 100:.2f}")
        if len(timings) > 1:
            print(f"speed-up of {args.workers} workers over 1: {timings[1] / timings[args.workers]:.2f}x")
        best = min(timings.values())
        print(f"target: 500 images well under 60 s -> {best * 500 / args.images:.1f} s per 500 images")


if __name__ == "__main__":
    main()
