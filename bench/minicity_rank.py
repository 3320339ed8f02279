"""Does MiniCity rank method families as the real benchmark does? (issue 19)

    python bench/minicity_rank.py --out runs-minicity [--benchmark minicity-gta2cs] [--resamples 2000]
                                  [--order issue19|modern]

The published order on GTA5 -> Cityscapes for the methods MiniCity runs (DeepLabV2-R101, the
papers' tables; reported.json): source-only 36.6 < AdaptSegNet 42.4 < AdvEnt 43.8 < CBST 46.47,
then CLST (its paper places it above CBST; udabench ships no CLST number, see docs/methods.md),
and the target-supervised oracle above all. Here each is a run name or method word of
the MiniCity table's sweep (bench/minicity_table.toml).

Prints, per benchmark: the mean headline mIoU over seeds of each method, Kendall's tau between the
published order and MiniCity's means, and for every pair whether MiniCity orders it as published,
with a two-level bootstrap interval of the difference (seeds resampled within each method, and
validation images resampled, paired across the two methods): a pair counts as ordered only when
its 95% interval excludes 0.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

# Published order, worst first: (label, word naming the MiniCity runs).
PUBLISHED = [("source-only", "source-only"), ("AdaptSegNet", "adaptsegnet"), ("AdvEnt", "advent"),
             ("CBST", "self-training"), ("CLST", "clst"), ("oracle", "oracle")]
# --order modern: the current generation beside the DeepLabV2 baselines, GTA5 -> Cityscapes, as
# published (reported.json): source-only 36.6 < AdaptSegNet 42.4 < AdvEnt 43.8 < CBST 46.47 <
# DACS 52.1 < DAFormer 68.3 < MIC 75.9. Without CLST (no published number) and the oracle (the
# DeepLabV2 oracle, 65.1, is below DAFormer and MIC, which run a MiT-B5).
MODERN = [*PUBLISHED[:4], ("DACS", "dacs"), ("DAFormer", "daformer:mic=false"), ("MIC", "mic")]
ORDERS = {"issue19": PUBLISHED, "modern": MODERN}


def config_word(out: Path, bench: str, word: str) -> str:
    """``method:key=value`` -> the config hash of that method's runs with that setting (DAFormer
    without MIC has no run name in the table's sweep); any other word as it is."""
    from udabench.results import api

    method, _, condition = word.partition(":")
    if not condition:
        return word
    key, _, value = condition.partition("=")
    hashes = {r["config_hash"] for r in api.load_records(out, bench)
              if r["method"] == method and r["method_config"].get(key) == json.loads(value)}
    if len(hashes) != 1:
        raise SystemExit(f"{word}: {len(hashes)} configurations on {bench}, expected one")
    return hashes.pop()[:8]


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-a of two score lists (ties count as neither concordant nor discordant)."""
    n, s = len(a), 0
    for i, j in itertools.combinations(range(n), 2):
        s += np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
    return float(s) / (n * (n - 1) / 2)


def side_matrices(records: list[dict]) -> tuple[np.ndarray, list[str]]:
    """[seeds, images, C, C] per-image confusion matrices of one configuration, images aligned."""
    from udabench.results.compare import load_per_image

    loaded = [load_per_image(r["run_dir"]) for r in records]
    ids = loaded[0][0]
    for other, _ in loaded[1:]:
        if not np.array_equal(other, ids):
            raise SystemExit("runs of one configuration were scored on different images")
    return np.stack([m for _, m in loaded]), list(ids)


def miou(matrices: np.ndarray, classes: list[int]) -> np.ndarray:
    """mIoU (%) over ``classes`` of [..., C, C] matrices (NaN classes skipped)."""
    tp = np.diagonal(matrices, axis1=-2, axis2=-1)
    union = matrices.sum(-1) + matrices.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)[..., classes]
    return 100 * np.nanmean(iou, axis=-1)


def two_level_interval(a: np.ndarray, b: np.ndarray, classes: list[int], resamples: int,
                       rng: np.random.Generator) -> tuple[float, float, float]:
    """(difference of seed-mean mIoU, 2.5%, 97.5%) of A - B; seeds resampled per side, images
    resampled once per draw and shared by both sides (the same validation images)."""
    point = float(miou(a.sum(1), classes).mean() - miou(b.sum(1), classes).mean())
    n_img = a.shape[1]
    diffs = np.empty(resamples)
    for k in range(resamples):
        w = np.bincount(rng.integers(0, n_img, n_img), minlength=n_img).astype(np.float64)
        sa = a[rng.integers(0, a.shape[0], a.shape[0])]
        sb = b[rng.integers(0, b.shape[0], b.shape[0])]
        ma = np.tensordot(w, sa, axes=([0], [1]))  # [seeds, C, C]
        mb = np.tensordot(w, sb, axes=([0], [1]))
        diffs[k] = miou(ma, classes).mean() - miou(mb, classes).mean()
    return point, float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def main() -> None:
    from udabench.results import api
    from udabench.taxonomy import SUBSETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs-minicity"))
    parser.add_argument("--benchmark", action="append")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--order", choices=sorted(ORDERS), default="issue19",
                        help="issue19: the DeepLabV2 baselines, CLST and the oracle; "
                             "modern: the baselines, DACS, DAFormer and MIC")
    args = parser.parse_args()
    for bench in args.benchmark or ["minicity-gta2cs", "minicity-synthia2cs"]:
        rng = np.random.default_rng(0)
        found = []
        for label, word in ORDERS[args.order]:
            try:
                [side] = api.sides(args.out, [config_word(args.out, bench, word)], bench)
            except Exception as exc:  # a missing method is reported, the rest still ranked
                print(f"{bench}: {label} ({word}) has no runs here: {exc}")
                continue
            mats, _ = side_matrices(side.records)
            found.append((label, side, mats))
        if len(found) < 2:
            continue
        headline = str(found[0][1].records[0]["subsets"][0])
        classes = sorted(SUBSETS[headline])
        means = [float(miou(m.sum(1), classes).mean()) for _, _, m in found]
        ranks = list(range(len(found)))  # the published order
        print(f"\n{bench} (mIoU{headline}, mean over each method's seeds; published order, worst first)")
        for (label, side, _), m in zip(found, means):
            print(f"  {label:12s} {m:6.1f}   ({side.label}, seeds {','.join(map(str, side.seeds))})")
        print(f"  Kendall tau (published order vs MiniCity means): {kendall_tau(ranks, means):+.2f}")
        print("  pairs (published: lower < higher):")
        for (i, (la, sa, ma)), (j, (lb, sb, mb)) in itertools.combinations(enumerate(found), 2):
            d, lo, hi = two_level_interval(mb, ma, classes, args.resamples, rng)  # higher - lower
            verdict = ("ordered as published" if lo > 0 else "REVERSED" if hi < 0
                       else "not resolved (interval includes 0)")
            print(f"    {la:12s} < {lb:12s}: {lb} - {la} = {d:+5.1f} [{lo:+5.1f}, {hi:+5.1f}]  {verdict}")


if __name__ == "__main__":
    main()
