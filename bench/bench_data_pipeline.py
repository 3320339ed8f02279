"""Training data pipeline throughput: udabench vs the classic UDA recipe, in one process.

Both read a GTA5-sized pair (1914x1052 RGB PNG + palette label PNG), map labelIds to trainIds,
resize to 1280x720, take a random 512x512 crop and flip. The reference is written the way the
classic UDA code does it: Pillow open + convert, PIL resize of the whole image, torchvision
transforms on PIL images, to_tensor, and the per-class label remapping loop. udabench decodes
with torchvision.io and resizes only the crop region.

    PYTHONPATH=. python bench/bench_data_pipeline.py [--images 6] [--rounds 3]

Target: at least 1.5x the reference, images/s per worker (one thread, like a loader worker).
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from udabench.data import TrainTransform, gta5  # noqa: E402
from udabench.taxonomy import CLASSES  # noqa: E402

W0, H0 = 1914, 1052
TRAIN_HW, CROP = (720, 1280), 512


def make_gta5_like(root: Path, n: int, seed: int = 0) -> None:
    """Street-like content: smooth gradients, large regions, texture and sensor noise, so PNG
    compression (and hence decode cost) is in the range of real GTA5 frames (2-3 MB)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    label_ids = np.array([c.label_id for c in CLASSES] + [0, 1, 4])
    yy, xx = np.mgrid[0:H0, 0:W0]
    for i in range(1, n + 1):
        cells = rng.integers(0, len(label_ids), (H0 // 48 + 1, W0 // 64 + 1))
        ids = label_ids[np.kron(cells, np.ones((48, 64), int))[:H0, :W0]].astype(np.uint8)
        base = rng.integers(40, 220, (len(label_ids), 3))
        idx = np.searchsorted(np.sort(label_ids), ids)
        img = base[idx] + ((xx[..., None] + 2 * yy[..., None]) // 37 % 24)
        img = img + rng.normal(0, 2, img.shape)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "images" / f"{i:05d}.png")
        lab = Image.fromarray(ids, mode="P")
        lab.putpalette([v for c in range(256) for v in (c, c, c)])
        lab.save(root / "labels" / f"{i:05d}.png")


class ClassicGTA5:
    """The AdaptSegNet/ADVENT-style dataset with torchvision transforms on PIL images."""

    def __init__(self, root: Path, interpolation: int):
        self.files = sorted((root / "images").glob("*.png"))
        self.root, self.interpolation = root, interpolation
        self.id_to_trainid = {c.label_id: c.train_id for c in CLASSES}

    def __getitem__(self, i: int):
        path = self.files[i]
        image = Image.open(path).convert("RGB")
        label = Image.open(self.root / "labels" / path.name)
        image = image.resize((TRAIN_HW[1], TRAIN_HW[0]), self.interpolation)
        label = label.resize((TRAIN_HW[1], TRAIN_HW[0]), Image.NEAREST)
        top, left, h, w = T.RandomCrop.get_params(image, (CROP, CROP))
        image, label = TF.crop(image, top, left, h, w), TF.crop(label, top, left, h, w)
        if random.random() < 0.5:
            image, label = TF.hflip(image), TF.hflip(label)
        label = np.asarray(label, np.uint8)
        label_copy = 255 * np.ones(label.shape, dtype=np.uint8)
        for k, v in self.id_to_trainid.items():
            label_copy[label == k] = v
        return {"image": TF.to_tensor(image), "label": torch.from_numpy(label_copy)}


def interleaved_rates(fns: list, n: int, rounds: int) -> list[float]:
    """Images/s of each pipeline from the process CPU time (one thread: what one loader worker
    delivers on a core of its own), best of ``rounds``; rounds alternate between the pipelines
    so that background load and cache effects hit them alike."""
    for fn in fns:
        fn(0)  # warm-up (file cache, lazy imports)
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for k, fn in enumerate(fns):
            t0 = time.process_time()
            for i in range(n):
                fn(i)
            best[k] = min(best[k], time.process_time() - t0)
    return [n / b for b in best]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)  # one loader worker
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "gta5"
        with console.status(f"writing {args.images} GTA5-sized pairs"):
            make_gta5_like(root, args.images)
        size_mb = sum(p.stat().st_size for p in (root / "images").glob("*.png")) / args.images / 1e6
        rows = []
        for name, pil_mode in (("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)):
            ours = gta5(root, manifest=None, transform=TrainTransform(
                size=TRAIN_HW, crop=(CROP, CROP), flip_p=0.5, interpolation=name))
            classic = ClassicGTA5(root, pil_mode)
            a, b = interleaved_rates([lambda i: ours[(i, 1000 + i)], lambda i: classic[i]],
                                     args.images, args.rounds)
            rows.append((name, a, b))
    table = Table(title="GTA5 1914x1052 -> 1280x720 -> 512 crop + flip: images/s per worker",
                  title_justify="left")
    for col in ("resize", "udabench", "classic PIL", "speed-up"):
        table.add_column(col, justify="right")
    for name, a, b in rows:
        style = "green" if a / b >= 1.5 else "red"
        table.add_row(name, f"{a:.1f}", f"{b:.1f}", f"[{style}]{a / b:.2f}x")
    console.print(table)
    console.print(
        f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.release()}; python {platform.python_version()}, "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}"
        f", numpy {np.__version__}; {args.images} images of {size_mb:.1f} MB, best of "
        f"{args.rounds} rounds of CPU time; target >= 1.5x", soft_wrap=True)


if __name__ == "__main__":
    main()
