"""Linear probe: are the MiniCity-pretrained features useful beyond their pretraining task?

Run: python bench/probe_minicity_pretrained.py --backbone resnet-tiny [--scenes 200 --test-scenes 100]

Frozen backbone features of MiniCity SOURCE-domain scenes (the "game" style of minicity-gta2cs'
GTA5-format source, rendered at the 128x256 training size) are average-pooled over 32x32 patches;
a patch's label is its majority class (patches where no class covers half the labelled pixels are
left out). A multinomial logistic regression (L2, LBFGS, standardised features) is fitted on the
patches of --scenes scenes and scored on --test-scenes other scenes, for the shipped pretrained
weights and for random initialisations of the same network (--random-seeds). BatchNorm statistics
are re-estimated on the probe's training scenes for every network (as MiniCity's frozen_affine
training does). Target-domain labels are never read.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

from udabench.minicity import MiniCityParams, render_scene  # noqa: E402
from udabench.minicity.pretrained import weights_path  # noqa: E402
from udabench.models import SegmenterConfig, build_segmenter  # noqa: E402

H, W, PATCH = 128, 256, 32
TEST_SEED_OFFSET = 1_000_000


def scenes(seeds: range, grey: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """Images [N, 3, H, W] in [0, 1] and per-patch majority labels [N, H/P, W/P] (-1: none);
    grey: luma in all three channels (the probe without colour)."""
    params = MiniCityParams()
    images, labels = [], []
    for seed in seeds:
        rgb, train_ids = render_scene(seed, H, W, "game", "gta5", params)
        image = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
        if grey:
            image = (torch.tensor([0.299, 0.587, 0.114])[:, None, None] * image).sum(0).expand(3, H, W)
        images.append(image)
        t = train_ids.reshape(H // PATCH, PATCH, W // PATCH, PATCH).transpose(0, 2, 1, 3)
        t = t.reshape(H // PATCH, W // PATCH, -1)
        lab = np.full(t.shape[:2], -1, dtype=np.int64)
        for i in range(t.shape[0]):
            for j in range(t.shape[1]):
                valid = t[i, j][t[i, j] != 255]
                if valid.size:
                    counts = np.bincount(valid, minlength=19)
                    if counts.max() * 2 >= valid.size:
                        lab[i, j] = counts.argmax()
        labels.append(lab)
    return torch.stack(images), np.stack(labels)


@torch.no_grad()
def patch_features(seg, images: torch.Tensor, fit_bn: torch.Tensor) -> dict[str, torch.Tensor]:
    """{'deepest', 'all levels'} -> [N * patches, C] features (BN statistics from fit_bn)."""
    bns = seg.batchnorms()
    if bns:  # cumulative re-estimation of the running statistics on the probe's training scenes
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        seg.train()
        for start in range(0, len(fit_bn), 16):
            seg.backbone(seg.normalize(fit_bn[start:start + 16]))
    seg.eval()
    grid = (H // PATCH, W // PATCH)
    levels: list[list[torch.Tensor]] = []
    for start in range(0, len(images), 16):
        feats = seg.backbone(seg.normalize(images[start:start + 16]))
        levels.append([F.adaptive_avg_pool2d(f, grid) for f in feats])
    per_level = [torch.cat([chunk[k] for chunk in levels]) for k in range(len(levels[0]))]
    flat = lambda f: f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])  # noqa: E731
    return {"deepest": flat(per_level[-1]), "all levels": torch.cat([flat(f) for f in per_level], 1)}


def fit_and_score(xtr, ytr, xte, yte, l2: float = 1e-3) -> tuple[float, float]:
    """Multinomial logistic regression; (accuracy, mean per-class recall over test classes)."""
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    classes = int(max(ytr.max(), yte.max())) + 1
    torch.manual_seed(0)
    lin = torch.nn.Linear(xtr.shape[1], classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=300, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(xtr), ytr) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = lin(xte).argmax(1)
    acc = (pred == yte).float().mean().item()
    recalls = [(pred[yte == c] == c).float().mean().item() for c in yte.unique().tolist()
               if int((yte == c).sum()) >= 5]
    return acc, float(np.mean(recalls))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet-tiny")
    ap.add_argument("--scenes", type=int, default=200, help="probe-training scenes")
    ap.add_argument("--test-scenes", type=int, default=100, help="probe-test scenes")
    ap.add_argument("--random-seeds", type=int, default=3, help="random initialisations compared")
    ap.add_argument("--grey", action="store_true", help="greyscale scenes: the probe without colour")
    ap.add_argument("--weights", type=Path, default=None,
                    help="a weights file to probe instead of the shipped (checksummed) one")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    console = Console()
    console.print(machine_line())
    path = args.weights or weights_path(args.backbone)
    xtr_img, ytr = scenes(range(args.scenes), args.grey)
    xte_img, yte = scenes(range(TEST_SEED_OFFSET, TEST_SEED_OFFSET + args.test_scenes), args.grey)
    keep_tr, keep_te = ytr.reshape(-1) >= 0, yte.reshape(-1) >= 0
    ytr_t, yte_t = torch.from_numpy(ytr.reshape(-1)[keep_tr]), torch.from_numpy(yte.reshape(-1)[keep_te])
    console.print(f"{args.backbone}: {len(ytr_t)} training and {len(yte_t)} test patches "
                  f"({PATCH}x{PATCH}) of MiniCity source scenes at {H}x{W}{' in grey' if args.grey else ''}; "
                  f"{len(ytr_t.unique())} classes")
    # "random init" is the network as MiniCity builds it from scratch: timm zero-initialises the
    # last BatchNorm scale of every residual branch, and frozen_affine keeps it at 0, so only the
    # stem and the 1x1 shortcuts carry signal; "gamma 1" sets every BatchNorm scale to 1.
    inits = [("pretrained", str(path), 0, False)]
    inits += [(f"random init (seed {s})", "scratch", s, False) for s in range(args.random_seeds)]
    inits += [(f"random init, gamma 1 (seed {s})", "scratch", s, True)
              for s in range(args.random_seeds)]
    table = Table(title="linear probe on frozen features (MiniCity source patches)")
    for col in ("init", "features", "dims", "accuracy", "mean class recall"):
        table.add_column(col, justify="right")
    for name, init, seed, gamma_one in inits:
        torch.manual_seed(seed)
        seg = build_segmenter(SegmenterConfig(backbone=args.backbone, init=init,
                                              bn_mode="frozen_affine"), 19)
        if gamma_one:
            if not seg.batchnorms():
                continue
            for bn in seg.batchnorms():
                torch.nn.init.ones_(bn.weight)
        feats_tr = patch_features(seg, xtr_img, xtr_img)
        feats_te = patch_features(seg, xte_img, xtr_img)
        for kind in ("deepest", "all levels"):
            acc, recall = fit_and_score(feats_tr[kind][torch.from_numpy(keep_tr)], ytr_t,
                                        feats_te[kind][torch.from_numpy(keep_te)], yte_t)
            table.add_row(name, kind, str(feats_tr[kind].shape[1]), f"{acc:.3f}", f"{recall:.3f}")
    majority = (yte_t == torch.mode(ytr_t).values).float().mean().item()
    console.print(table)
    console.print(f"majority-class baseline accuracy: {majority:.3f}")


if __name__ == "__main__":
    main()
