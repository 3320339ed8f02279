"""Paired bootstrap over images and Welch's t over seeds."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tests.results_kit import synthetic_matrices
from udabench.metrics import score_matrix
from udabench.results.bootstrap import miou_of, paired_bootstrap, seed_interval, t_quantile


def test_miou_of_matches_score_matrix_in_both_conventions():
    rng = np.random.default_rng(1)
    mats = rng.integers(0, 30, size=(5, 19, 19))
    mats[0, 9, :] = 0  # terrain absent from ground truth and predictions: NaN IoU, skipped
    mats[0, :, 9] = 0
    for m in mats:
        for conv in ("A", "B"):
            score = score_matrix(m, ("19", "16", "13"), conv)
            for subset in ("19", "16", "13"):
                assert miou_of(m, subset, conv) == pytest.approx(score.miou[subset], abs=1e-12)
    batch = miou_of(mats, "16", "B")
    assert batch.shape == (5,)


def test_identical_sides_give_exactly_zero_interval():
    mats = synthetic_matrices(np.random.default_rng(2), 50, 0.6)
    r = paired_bootstrap(mats, mats, resamples=300)
    assert (r.difference, r.low, r.high) == (0.0, 0.0, 0.0)
    assert not r.significant
    # Several seeds per side, same matrices on both: still exactly zero.
    r = paired_bootstrap([mats, mats[::-1].copy()], [mats, mats[::-1].copy()], resamples=100)
    assert (r.low, r.high) == (0.0, 0.0)


def test_point_estimate_and_antisymmetry():
    rng = np.random.default_rng(3)
    a = synthetic_matrices(rng, 40, 0.8)
    b = synthetic_matrices(rng, 40, 0.6)
    r = paired_bootstrap(a, b, resamples=500, seed=7)
    expected = (score_matrix(a.sum(0)).miou["19"] - score_matrix(b.sum(0)).miou["19"]) * 100
    assert r.difference == pytest.approx(expected, abs=1e-9)
    assert r.low < r.difference < r.high and r.significant and r.low > 0
    flipped = paired_bootstrap(b, a, resamples=500, seed=7)
    assert flipped.low == pytest.approx(-r.high) and flipped.high == pytest.approx(-r.low)
    # Seed-mean statistic: the point estimate is the difference of per-seed mIoU means.
    a2 = synthetic_matrices(rng, 40, 0.75)
    r2 = paired_bootstrap([a, a2], b, resamples=200)
    mean_a = (score_matrix(a.sum(0)).miou["19"] + score_matrix(a2.sum(0)).miou["19"]) / 2
    assert r2.difference == pytest.approx((mean_a - score_matrix(b.sum(0)).miou["19"]) * 100)


def test_interval_covers_the_population_difference():
    """Sample validation sets from a large population; the 95% interval should cover the
    population mIoU difference in most trials (nominal 95%) and be centred near it."""
    rng = np.random.default_rng(4)
    pop = 3000
    difficulty = rng.uniform(0.6, 1.2, pop)  # shared by A and B: the pairing matters
    acc_a = np.linspace(0.55, 0.8, 19)
    pop_a = synthetic_matrices(rng, pop, acc_a, difficulty=difficulty)
    pop_b = synthetic_matrices(rng, pop, acc_a - 0.03, difficulty=difficulty)
    truth = (miou_of(pop_a.sum(0)) - miou_of(pop_b.sum(0))) * 100
    assert truth > 0.5
    covered, trials = 0, 40
    for t in range(trials):
        pick = rng.choice(pop, 120, replace=False)
        r = paired_bootstrap(pop_a[pick], pop_b[pick], resamples=300, seed=t)
        covered += r.low <= truth <= r.high
    assert covered >= 34  # P(X <= 33 | n=40, p=0.95) < 0.2%


def test_bad_inputs_are_user_errors():
    from udabench.errors import UserError

    a = np.zeros((4, 19, 19), np.int64)
    with pytest.raises(UserError, match="same validation images"):
        paired_bootstrap(a, np.zeros((5, 19, 19), np.int64))
    with pytest.raises(UserError, match="unknown class subset '17'"):
        paired_bootstrap(a, a, subset="17")


def test_t_quantiles_match_tables():
    # Two-sided 95% critical values from standard t tables.
    for df, value in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)):
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-3)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.95996, abs=1e-4)
    assert t_quantile(0.025, 4) == pytest.approx(-2.776, abs=1e-3)
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1.3, 2.7, 5.5, 17.2):
        assert t_quantile(0.975, df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-9)


def test_seed_interval_by_hand():
    # a: mean 2, var 1 -> se^2 = 1/3; b constant -> Welch df = 2; t(0.975, 2) = 4.3027.
    s = seed_interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    half = 4.302652729749464 * math.sqrt(1 / 3)
    assert s.difference == 2.0 and s.df == pytest.approx(2.0)
    assert (s.low, s.high) == (pytest.approx(2 - half), pytest.approx(2 + half))
    same = seed_interval([5.0, 5.0], [4.0, 4.0])
    assert (same.low, same.high) == (1.0, 1.0)
