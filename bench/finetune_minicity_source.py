"""Does the MiniCity-pretrained init help a segmenter learn the SOURCE task? (source labels only)

Run: python bench/finetune_minicity_source.py --backbone resnet-tiny [--iters 300 --seeds 0,1]

Trains MiniCity's default segmenter (resnet-tiny or mit-tiny + ASPP head, frozen_affine BN) on
MiniCity's GTA5-format "game" source scenes at the 128x256 training size with MiniCity's
source-only settings (SGD lr 0.01, heads x10, momentum 0.9, weight decay 5e-4, poly 0.9, batch 8,
flips; mit-tiny with MiniCity's 32-channel DAFormer head), from the shipped pretrained weights and from scratch, and scores mIoU19 on held-out
source scenes. This is ImageNet's classic transfer check (does the init help supervised training
on a new task?) without any target-domain image or label, and without any adaptation method.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

from udabench.benchmarks import MINICITY_DEFAULTS  # noqa: E402
from udabench.minicity import MiniCityParams, render_scene  # noqa: E402
from udabench.minicity.pretrained import weights_path  # noqa: E402
from udabench.models import SegmenterConfig, build_segmenter  # noqa: E402

H, W, CLASSES = 128, 256, 19
TEST_SEED_OFFSET = 1_000_000


def scenes(seeds) -> tuple[torch.Tensor, torch.Tensor]:
    params = MiniCityParams()
    images, labels = [], []
    for seed in seeds:
        rgb, train_ids = render_scene(seed, H, W, "game", "gta5", params)
        images.append(torch.from_numpy(rgb).permute(2, 0, 1))
        labels.append(torch.from_numpy(train_ids.astype(np.int64)))
    return torch.stack(images), torch.stack(labels)


def miou(seg, images: torch.Tensor, labels: torch.Tensor) -> float:
    seg.eval()
    conf = torch.zeros(CLASSES, CLASSES, dtype=torch.int64)
    with torch.no_grad():
        for start in range(0, len(images), 16):
            x = images[start:start + 16].float() / 255
            logits = F.interpolate(seg(x)["out"], size=(H, W), mode="bilinear", align_corners=False)
            pred, y = logits.argmax(1).reshape(-1), labels[start:start + 16].reshape(-1)
            keep = y != 255
            conf += torch.bincount(y[keep] * CLASSES + pred[keep],
                                   minlength=CLASSES * CLASSES).reshape(CLASSES, CLASSES)
    inter = conf.diag().double()
    union = conf.sum(0) + conf.sum(1) - conf.diag()
    present = conf.sum(1) > 0
    return float((inter[present] / union[present].double()).mean() * 100)


def minicity_head_channels(backbone: str) -> int:
    """The head width MiniCity's runs give this backbone (its scaled networks: mit-tiny gets a
    32-channel DAFormer head), else the segmenter's default."""
    for _, settings in MINICITY_DEFAULTS.scaled_networks:
        settings = dict(settings)
        if settings.get("backbone") == backbone and "head_channels" in settings:
            return int(settings["head_channels"])
    return int(SegmenterConfig().head_channels)


def train(init: str, backbone: str, head: str, seed: int, iters: int, data, lr: float = 0.01,
          bn_mode: str = "frozen_affine", gamma_one: bool = False) -> float:
    images, labels, test_images, test_labels = data
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    seg = build_segmenter(SegmenterConfig(backbone=backbone, init=init, bn_mode=bn_mode, head=head,
                                          head_channels=minicity_head_channels(backbone)), CLASSES)
    if gamma_one:  # undo timm's zero-initialised last BN scale of each residual branch
        for bn in seg.batchnorms():
            with torch.no_grad():
                bn.weight.fill_(1.0)
    opt = torch.optim.SGD(seg.param_groups(lr), lr=lr, momentum=0.9, weight_decay=5e-4)
    seg.train()
    for it in range(iters):
        idx = rng.choice(len(images), 8, replace=False)
        x, y = images[idx].float() / 255, labels[idx]
        flip = torch.from_numpy(rng.random(8) < 0.5)
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"] * (1 - it / iters) ** 0.9
        logits = F.interpolate(seg(x)["out"], size=(H, W), mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return miou(seg, test_images, test_labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet-tiny")
    ap.add_argument("--head", default=None, help="segmentation head (default: aspp, daformer for MiT)")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--scenes", type=int, default=400, help="source training scenes")
    ap.add_argument("--test-scenes", type=int, default=100)
    ap.add_argument("--weights", type=Path, default=None,
                    help="a weights file instead of the shipped (checksummed) one")
    ap.add_argument("--lr", type=float, default=0.01, help="MiniCity's 0.01 by default")
    ap.add_argument("--bn-mode", default="frozen_affine", help="MiniCity's frozen_affine by default")
    ap.add_argument("--inits", default="pretrained,scratch",
                    help="any of pretrained, scratch, scratch-gamma1 (every BN scale 1)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    print(machine_line(), flush=True)
    path = args.weights or weights_path(args.backbone)
    data = (*scenes(range(args.scenes)),
            *scenes(range(TEST_SEED_OFFSET, TEST_SEED_OFFSET + args.test_scenes)))
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{args.backbone}: {args.iters} iterations on {args.scenes} MiniCity source scenes, "
          f"mIoU19 on {args.test_scenes} held-out source scenes", flush=True)
    print(f"lr {args.lr}, bn_mode {args.bn_mode}", flush=True)
    known = {"pretrained": (str(path), False), "scratch": ("scratch", False),
             "scratch-gamma1": ("scratch", True)}
    for name in args.inits.split(","):
        init, gamma_one = known[name]
        results = []
        for seed in seeds:
            t0 = time.perf_counter()
            head = args.head or ("daformer" if args.backbone.startswith("mit") else "aspp")
            results.append(train(init, args.backbone, head, seed, args.iters, data, args.lr,
                                 args.bn_mode, gamma_one))
            print(f"  {name:14s} seed {seed}: {results[-1]:.1f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
        print(f"{name:14s} mean {np.mean(results):.1f} +- {np.std(results):.1f}", flush=True)


if __name__ == "__main__":
    main()
