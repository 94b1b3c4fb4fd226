"""Tests of the statistics helpers against independent computations: normal-approximation widths,
np.corrcoef, least squares on an augmented system, and probes on data whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from workflow_scripts.core import stats

# --- bootstrap_ci -------------------------------------------------------------------------------


def test_bootstrap_ci_matches_normal_approximation_for_bernoulli():
    # n * n_resamples exceeds the chunk bound, so the interval is assembled from several blocks.
    values = (np.random.default_rng(0).random(5000) < 0.3).astype(float)
    low, high = stats.bootstrap_ci(values, n_resamples=2000, seed=1)
    p = values.mean()
    normal_width = 2 * 1.96 * np.sqrt(p * (1 - p) / values.size)
    assert low < p < high
    assert (high - low) == pytest.approx(normal_width, rel=0.15)


def test_bootstrap_ci_is_deterministic_per_seed():
    values = np.random.default_rng(2).random(300)
    first = stats.bootstrap_ci(values, n_resamples=500, seed=7)
    assert stats.bootstrap_ci(values, n_resamples=500, seed=7) == first
    assert stats.bootstrap_ci(values, n_resamples=500, seed=8) != first


def test_bootstrap_ci_of_constant_has_zero_width():
    assert stats.bootstrap_ci(np.full(50, 0.25), n_resamples=200, seed=0) == pytest.approx((0.25, 0.25))


def test_bootstrap_ci_of_empty_is_nan():
    low, high = stats.bootstrap_ci(np.array([]), n_resamples=100, seed=0)
    assert np.isnan(low) and np.isnan(high)


# --- pearson --------------------------------------------------------------------------------------


def test_pearson_matches_corrcoef():
    rng = np.random.default_rng(3)
    x = rng.random(200)
    y = 0.5 * x + rng.random(200)
    assert stats.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)


def test_pearson_is_nan_for_constant_or_too_short():
    # 0.1 is not exactly representable, so a centred constant series is not exactly zero.
    assert np.isnan(stats.pearson(np.full(10, 0.1), np.arange(10.0)))
    assert np.isnan(stats.pearson(np.array([1.0]), np.array([2.0])))


# --- PearsonAccumulator ---------------------------------------------------------------------------


def test_accumulator_over_uneven_chunks_matches_corrcoef_per_cell():
    rng = np.random.default_rng(4)
    shape = (3, 4)
    chunks = [1, 7, 30, 2]
    xs = [rng.random(shape + (m,)) for m in chunks]
    ys = [0.3 * x + rng.random(x.shape) for x in xs]
    acc = stats.PearsonAccumulator(shape)
    for x, y in zip(xs, ys):
        acc.add(x, y)
    x_all, y_all = np.concatenate(xs, axis=-1), np.concatenate(ys, axis=-1)
    expected = np.array([[np.corrcoef(x_all[i, j], y_all[i, j])[0, 1] for j in range(4)] for i in range(3)])
    assert acc.count == sum(chunks)
    np.testing.assert_allclose(acc.result(), expected, atol=1e-10)


def test_accumulator_with_shared_x_and_constant_cell():
    rng = np.random.default_rng(5)
    shape = (2, 3)
    xs = [rng.random(m) for m in (5, 11)]
    ys = [rng.random(shape + (x.size,)) for x in xs]
    for y in ys:
        y[1, 2] = 0.1  # one head attends uniformly: its correlation is undefined
    acc = stats.PearsonAccumulator(shape)
    for x, y in zip(xs, ys):
        acc.add(x, y)
    x_all, y_all = np.concatenate(xs), np.concatenate(ys, axis=-1)
    result = acc.result()
    assert np.isnan(result[1, 2])
    for i, j in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]:
        assert result[i, j] == pytest.approx(np.corrcoef(x_all, y_all[i, j])[0, 1], abs=1e-10)


# --- ridge ----------------------------------------------------------------------------------------


def test_ridge_without_penalty_recovers_noise_free_linear_map():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(50, 4)) + 3.0  # off-centre, so a wrong intercept would show
    w, c = np.array([1.5, -2.0, 0.0, 0.7]), 4.2
    W, b = stats.ridge_fit(X, X @ w + c, lam=1e-10)
    np.testing.assert_allclose(W, w, atol=1e-6)
    assert b == pytest.approx(c, abs=1e-6)
    np.testing.assert_allclose(stats.ridge_predict(X, W, b), X @ w + c, atol=1e-6)


def test_ridge_with_penalty_matches_augmented_least_squares():
    rng = np.random.default_rng(7)
    n, d, k, lam = 40, 5, 3, 2.5
    X = rng.normal(size=(n, d)) + 1.0
    Y = rng.normal(size=(n, k))
    W, b = stats.ridge_fit(X, Y, lam)
    # Ridge on centred data is least squares with sqrt(lam) * I rows appended (targets 0).
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    X_aug = np.vstack([Xc, np.sqrt(lam) * np.eye(d)])
    Y_aug = np.vstack([Yc, np.zeros((d, k))])
    W_expected = np.linalg.lstsq(X_aug, Y_aug, rcond=None)[0]
    np.testing.assert_allclose(W, W_expected, atol=1e-10)
    np.testing.assert_allclose(b, Y.mean(0) - X.mean(0) @ W_expected, atol=1e-10)


# --- group_folds ----------------------------------------------------------------------------------


def test_group_folds_keeps_groups_together_and_fills_every_fold():
    groups = np.random.default_rng(8).integers(0, 23, size=200)
    folds = stats.group_folds(groups, n_folds=5, seed=0)
    for g in np.unique(groups):
        assert np.unique(folds[groups == g]).size == 1
    groups_per_fold = [np.unique(groups[folds == f]).size for f in range(5)]
    assert sorted(groups_per_fold) == [4, 4, 5, 5, 5]
    assert np.array_equal(stats.group_folds(groups, 5, seed=0), folds)


def test_group_folds_rejects_too_few_groups_or_folds():
    with pytest.raises(ValueError, match="only 3 distinct groups for 5 folds"):
        stats.group_folds(np.array([0, 0, 1, 2, 2]), n_folds=5, seed=0)
    with pytest.raises(ValueError, match="n_folds >= 2"):
        stats.group_folds(np.arange(10), n_folds=1, seed=0)


# --- probe ----------------------------------------------------------------------------------------


def test_probe_separates_well_separated_clusters():
    rng = np.random.default_rng(9)
    n, d = 600, 8
    labels = rng.integers(0, 3, size=n)
    centres = rng.normal(scale=5.0, size=(3, d))
    X = centres[labels] + rng.normal(size=(n, d))
    groups = rng.integers(0, 100, size=n)
    assert stats.probe_accuracy(X, labels, groups, n_classes=3, lam=1.0, n_folds=5, seed=0) > 0.95


def test_probe_on_noise_is_near_chance():
    rng = np.random.default_rng(10)
    n = 600
    X = rng.normal(size=(n, 10))
    labels = rng.integers(0, 3, size=n)
    accuracy = stats.probe_accuracy(X, labels, np.arange(n), n_classes=3, lam=1.0, n_folds=5, seed=0)
    assert 0.2 < accuracy < 0.5


def test_probe_grouping_prevents_leakage_between_copies():
    # Each example appears 4 times with identical features and one random label; with more features
    # than examples a linear map memorises them, so any copy of a test example in training leaks.
    rng = np.random.default_rng(11)
    n_groups, copies, d = 150, 4, 200
    groups = np.repeat(np.arange(n_groups), copies)
    X = rng.normal(size=(n_groups, d))[groups]
    labels = rng.integers(0, 3, size=n_groups)[groups]
    ungrouped = stats.probe_accuracy(X, labels, np.arange(groups.size), n_classes=3, lam=1e-3, n_folds=5, seed=0)
    grouped = stats.probe_accuracy(X, labels, groups, n_classes=3, lam=1e-3, n_folds=5, seed=0)
    assert ungrouped > 0.9
    assert 0.2 < grouped < 0.5


def test_probe_scores_accuracy_equals_probe_per_slice():
    rng = np.random.default_rng(12)
    n, d = 120, 6
    labels = rng.integers(0, 3, size=n)
    groups = rng.integers(0, 30, size=n)
    # Slices range from pure noise to clearly informative, so accuracies differ across the stack.
    signal = rng.random((2, 3, 4))[..., None, None]
    X = (signal * 3.0 * np.eye(3, d)[labels] + rng.normal(size=(2, 3, 4, n, d))).astype(np.float32)
    many = stats.probe_scores_many(X, labels, groups, n_classes=3, lam=0.5, n_folds=4, seed=3)["accuracy"]
    assert many.shape == (2, 3, 4)
    for index in np.ndindex(2, 3, 4):
        assert many[index] == stats.probe_accuracy(X[index], labels, groups, n_classes=3, lam=0.5, n_folds=4, seed=3)
    assert np.ptp(many) > 0.1


def test_balanced_accuracy_is_mean_recall_over_the_classes_present():
    # Class counts 4, 2, 1; class 3 is absent (predicting it is just wrong). Recalls by hand:
    # class 0: 3 of 4, class 1: 1 of 2, class 2: 0 of 1 -> (0.75 + 0.5 + 0) / 3.
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 0, 3, 1, 0, 0])
    assert stats.balanced_accuracy(predicted, labels, n_classes=4) == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    # Stacked predictions are scored row by row; a constant answer scores 1 / classes present, while
    # its plain accuracy is the majority share.
    constant = np.zeros_like(labels)
    both = stats.balanced_accuracy(np.stack([predicted, constant, labels]), labels, n_classes=4)
    np.testing.assert_allclose(both, [1.25 / 3, 1 / 3, 1.0])
    assert np.mean(constant == labels) == pytest.approx(4 / 7)


def test_shuffle_by_group_permutes_whole_groups():
    rng = np.random.default_rng(13)
    groups = np.repeat(np.arange(60), rng.integers(1, 5, size=60))
    per_group = rng.integers(0, 3, size=60)
    labels = per_group[groups]
    shuffled = stats.shuffle_by_group(labels, groups, seed=4)
    # Every group keeps one target, and the groups' targets are a permutation of the originals.
    assert all(np.unique(shuffled[groups == g]).size == 1 for g in range(60))
    assert sorted(shuffled[np.searchsorted(groups, np.arange(60))]) == sorted(per_group)
    assert np.mean(shuffled != labels) > 0.3
    np.testing.assert_array_equal(shuffled, stats.shuffle_by_group(labels, groups, seed=4))  # seeded
    assert not np.array_equal(shuffled, stats.shuffle_by_group(labels, groups, seed=5))
    # Targets that vary within a group (randomised demonstration labels) come from one donor group.
    mixed = rng.integers(0, 3, size=groups.size)
    out = stats.shuffle_by_group(mixed, groups, seed=4)
    for g in range(60):
        assert any(
            np.array_equal(out[groups == g], mixed[groups == h][np.arange((groups == g).sum()) % (groups == h).sum()])
            for h in range(60)
        )


def test_probe_scores_many_match_the_per_slice_probe_and_its_shuffled_control():
    rng = np.random.default_rng(14)
    n, d = 120, 6
    groups = rng.integers(0, 30, size=n)
    labels = rng.integers(0, 3, size=30)[groups]
    signal = rng.random((2, 3))[..., None, None]
    X = (signal * 3.0 * np.eye(3, d)[labels] + rng.normal(size=(2, 3, n, d))).astype(np.float32)
    scores = stats.probe_scores_many(X, labels, groups, n_classes=3, lam=0.5, n_folds=4, seed=3)
    assert set(scores) == {"accuracy", "balanced_accuracy", "shuffled_accuracy", "shuffled_balanced_accuracy"}
    shuffled = stats.shuffle_by_group(labels, groups, seed=3)
    for index in np.ndindex(2, 3):
        real = stats.probe_predictions(X[index], labels, groups, 3, 0.5, 4, 3)
        control = stats.probe_predictions(X[index], shuffled, groups, 3, 0.5, 4, 3)
        assert scores["accuracy"][index] == np.mean(real == labels)
        assert scores["balanced_accuracy"][index] == pytest.approx(stats.balanced_accuracy(real, labels, 3))
        assert scores["shuffled_balanced_accuracy"][index] == pytest.approx(stats.balanced_accuracy(control, shuffled, 3))
    assert np.ptp(scores["balanced_accuracy"]) > 0.1


def test_on_a_skewed_target_noise_probes_reach_the_majority_share_but_not_balanced_chance():
    # 85% of the targets are one class and the features carry nothing: plain accuracy sits near the
    # majority share, balanced accuracy and its shuffled control near 1/3.
    rng = np.random.default_rng(15)
    n = 600
    labels = np.where(rng.random(n) < 0.85, 0, rng.integers(1, 3, size=n))
    X = rng.normal(size=(4, n, 10))
    scores = stats.probe_scores_many(X, labels, np.arange(n), n_classes=3, lam=1.0, n_folds=5, seed=0)
    assert np.all(scores["accuracy"] > 0.8)
    assert np.all(np.abs(scores["balanced_accuracy"] - 1 / 3) < 0.06)
    assert np.all(np.abs(scores["shuffled_balanced_accuracy"] - 1 / 3) < 0.06)


def test_softmax_matches_a_direct_computation_and_does_not_overflow():
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 999.0]])
    expected = np.exp(logits[0]) / np.exp(logits[0]).sum()
    got = stats.softmax(logits)
    np.testing.assert_allclose(got[0], expected, rtol=1e-12)
    np.testing.assert_allclose(got[1], [np.e / (2 * np.e + 1)] * 2 + [1 / (2 * np.e + 1)], rtol=1e-12)
    np.testing.assert_allclose(stats.softmax(logits.T, axis=0), got.T, rtol=1e-12)


def test_the_two_stage_bootstrap_resamples_a_group_drawn_twice_afresh():
    """Two groups with the same items: no variation between groups, so the interval is that of the
    mean of two independent resamples of n items (sd / sqrt(2 n)), also when a resample draws one group
    twice. Reusing one resample for a twice-drawn group would widen it by about 22% (sd / sqrt(4 n / 3))."""
    items = np.random.default_rng(1).normal(size=200)
    sd = items.std() / np.sqrt(2 * items.size)
    low, high = stats.ragged_hierarchical_bootstrap_ci([items, items.copy()], 20000, 0)
    assert (high - low) == pytest.approx(2 * 1.959964 * sd, rel=0.05)
    # groups of unequal size take the per-draw path, which must give the same interval
    low, high = stats.ragged_hierarchical_bootstrap_ci([items, np.concatenate([items, items])], 4000, 0)
    assert (high - low) == pytest.approx(2 * 1.959964 * items.std() * np.sqrt((1 / 200 + 1 / 400) / 4), rel=0.08)


def test_the_two_stage_bootstrap_goes_on_from_a_shared_stream():
    groups = [np.arange(5.0), np.arange(5.0) + 1]
    rng = np.random.default_rng(3)
    first, second = (stats.ragged_hierarchical_bootstrap_ci(groups, 200, rng) for _ in range(2))
    again = np.random.default_rng(3)
    assert stats.ragged_hierarchical_bootstrap_ci(groups, 200, again) == first
    assert stats.ragged_hierarchical_bootstrap_ci(groups, 200, again) == second != first
