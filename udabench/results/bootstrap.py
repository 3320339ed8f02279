"""Uncertainty of a difference between two methods.

* Over validation images: a paired bootstrap. Both sides were scored on the same images, so each
  resample draws image indices with replacement, sums the per-image confusion matrices of A and of
  B for those same indices, and takes the mIoU difference (mIoU is a ratio of sums, not a mean of
  per-image scores, hence resampling matrices rather than scores). With several seeds per side the
  statistic is the difference of seed-mean mIoUs, every seed seeing the same resample.
* Over seeds: Welch's t interval on the per-seed headline mIoUs (numpy/stdlib only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from udabench.errors import UserError
from udabench.results.matrices import class_iou
from udabench.taxonomy import SUBSETS

_CHUNK = 256  # resamples per matrix product: bounds memory at chunk x C*C float64


@dataclass(frozen=True)
class BootstrapResult:
    difference: float  # A - B on all images, in mIoU points (%)
    low: float
    high: float
    confidence: float
    resamples: int
    images: int

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class SeedInterval:
    mean_a: float
    mean_b: float
    difference: float
    low: float
    high: float
    n_a: int
    n_b: int
    df: float
    confidence: float


def _stack(mats: np.ndarray | Sequence[np.ndarray], side: str) -> np.ndarray:
    """[S, N, C, C] from one [N, C, C] array or a list of them (one per seed)."""
    arr = np.asarray(mats) if not isinstance(mats, np.ndarray) else mats
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != arr.shape[-2] or arr.shape[1] == 0:
        raise UserError(f"{side}: expected per-image confusion matrices shaped [N, C, C] with N > 0, got {arr.shape}")
    return arr


def miou_of(mats: np.ndarray, subset: str = "19", convention: str = "A") -> np.ndarray:
    """mIoU in [0, 1] of each matrix in ``mats`` [..., C, C], as ``metrics.score_matrix`` scores it:
    NaN IoU (zero union) skipped; subsets other than 19 under convention B drop the ground-truth
    rows of terrain/truck/train."""
    iou = class_iou(mats, convention if subset != "19" else "A")
    picked = iou[..., list(SUBSETS[subset])]
    valid = ~np.isnan(picked)
    count = valid.sum(-1)
    total = np.where(valid, picked, 0.0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _seed_mean_miou(stack: np.ndarray, weights: np.ndarray, subset: str, convention: str) -> np.ndarray:
    """Seed-mean mIoU (%) for each row of ``weights`` [R, N] (image multiplicities)."""
    s, n, c, _ = stack.shape
    flat = stack.reshape(s, n, c * c).astype(np.float64)
    out = np.zeros(weights.shape[0])
    for seed_mats in flat:
        summed = (weights @ seed_mats).reshape(-1, c, c)
        out += miou_of(summed, subset, convention)
    return out / s * 100


def paired_bootstrap(
    a: np.ndarray | Sequence[np.ndarray],
    b: np.ndarray | Sequence[np.ndarray],
    subset: str = "19",
    convention: str = "A",
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Percentile interval of mIoU(A) - mIoU(B) over image resamples; matrices aligned by image."""
    sa, sb = _stack(a, "A"), _stack(b, "B")
    if sa.shape[1:] != sb.shape[1:]:
        raise UserError(f"A has per-image matrices {sa.shape[1:]} but B has {sb.shape[1:]}; "
                        "both must be scored on the same validation images")
    if subset not in SUBSETS:
        raise UserError(f"unknown class subset '{subset}'; known: {', '.join(SUBSETS)}")
    if resamples < 1 or not 0 < confidence < 1:
        raise UserError(f"resamples must be >= 1 and confidence in (0, 1), got {resamples} and {confidence}")
    n = sa.shape[1]
    full = np.ones((1, n))
    point = float(_seed_mean_miou(sa, full, subset, convention)[0] - _seed_mean_miou(sb, full, subset, convention)[0])
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        r = min(_CHUNK, resamples - start)
        idx = rng.integers(0, n, size=(r, n))
        # Multiplicity of each image in each resample: one bincount over offset indices.
        weights = np.bincount((idx + n * np.arange(r)[:, None]).ravel(), minlength=r * n).reshape(r, n)
        weights = weights.astype(np.float64)
        diffs[start:start + r] = (_seed_mean_miou(sa, weights, subset, convention)
                                  - _seed_mean_miou(sb, weights, subset, convention))
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(diffs, [tail, 100 - tail])
    return BootstrapResult(point, float(low), float(high), confidence, resamples, n)


# --- Student's t without scipy: regularised incomplete beta by continued fraction --------------


def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1 + aa * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t (bisection on the CDF; df may be fractional, as Welch's is)."""
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def seed_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> SeedInterval:
    """Welch's t interval for mean(a) - mean(b) over seeds (needs at least 2 seeds per side)."""
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.size < 2 or xb.size < 2:
        raise UserError(f"a seed-level interval needs at least 2 seeds per side (got {xa.size} and {xb.size})")
    va, vb = xa.var(ddof=1) / xa.size, xb.var(ddof=1) / xb.size
    diff = float(xa.mean() - xb.mean())
    se = math.sqrt(va + vb)
    if se == 0:
        return SeedInterval(float(xa.mean()), float(xb.mean()), diff, diff, diff, xa.size, xb.size,
                            float(xa.size + xb.size - 2), confidence)
    df = (va + vb) ** 2 / (va**2 / (xa.size - 1) + vb**2 / (xb.size - 1))
    half = t_quantile(1 - (1 - confidence) / 2, df) * se
    return SeedInterval(float(xa.mean()), float(xb.mean()), diff, diff - half, diff + half,
                        xa.size, xb.size, float(df), confidence)
