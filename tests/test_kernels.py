"""The kernel view: attention kernel weights, the kernel-regression vote and estimate, cosine kernels."""
from __future__ import annotations

import numpy as np
import pytest

from workflow_scripts.core import kernels

from .test_reconstruction import loop_reconstruct, loop_weights, random_spans


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_attention_weights_against_loop(seed):
    rng = np.random.default_rng(seed)
    x_start, y_pos, T = random_spans(rng, k=6, prefix=seed % 2)  # prefix 0: the first span holds the sink
    T += 3
    att = rng.random((3, 4, T))
    got = kernels.attention_weights(att, np.array(x_start), np.array(y_pos))
    want = loop_weights(att, x_start, y_pos)
    for name in kernels.ATTENTION_KERNELS:
        assert got[name].shape == (3, 4, 6)
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, err_msg=name)


def test_attention_weights_single_row():
    att = np.array([0.0, 0.1, 0.5, 0.2, 0.0, 0.05, 0.15])
    got = kernels.attention_weights(att, [1, 4], [3, 6])
    np.testing.assert_allclose(got["max"], [0.5, 0.15])
    np.testing.assert_allclose(got["label"], [0.2, 0.15])
    np.testing.assert_allclose(got["mean"], [0.8 / 3, 0.2 / 3])


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_kernel_vote_against_loop(n_classes):
    rng = np.random.default_rng(n_classes)
    weights = rng.random((4, 3, 8))
    demo_labels = rng.integers(0, n_classes, size=8)
    got = kernels.kernel_vote(weights, demo_labels, n_classes)
    np.testing.assert_array_equal(got, loop_reconstruct(weights, demo_labels, n_classes))


def test_kernel_vote_hand_example():
    # class 0: 0.1 + 0.2 = 0.3, class 1: 0.25, class 2 absent -> 0
    assert kernels.kernel_vote(np.array([0.1, 0.25, 0.2]), np.array([0, 1, 0]), 3) == 0
    assert kernels.kernel_vote(np.array([0.1, 0.35, 0.2]), np.array([0, 1, 0]), 3) == 1


def test_kernel_regression_follows_the_normalized_formula():
    rng = np.random.default_rng(0)
    sims = rng.normal(size=(50, 6))
    labels = rng.integers(0, 3, size=(50, 6))
    got = kernels.kernel_vote(sims, labels, 3)
    for s, y, g in zip(sims, labels, got):
        y_hat = sum(k * np.eye(3)[c] for k, c in zip(s, y)) / s.sum()
        assert g == np.argmax(y_hat)
    # a negative total similarity flips the vote, as the formula says: [-0.5, -0.1] / -0.6 favours class 0
    assert kernels.kernel_vote(np.array([-0.5, -0.1]), np.array([0, 1]), 2) == 0
    assert kernels.kernel_vote(np.array([0.5, 0.1]), np.array([0, 1]), 2) == 0
    assert kernels.kernel_vote(np.array([0.1, 0.5]), np.array([0, 1]), 2) == 1


def test_kernel_estimate_matches_an_explicit_loop():
    rng = np.random.default_rng(9)
    weights = rng.normal(size=(5, 11))  # negative weights included on purpose
    labels = rng.integers(0, 4, size=(5, 11))
    result = kernels.kernel_estimate(weights, labels, 4)
    for p in range(5):
        numerator = np.zeros(4)
        for w, y in zip(weights[p], labels[p]):
            numerator[y] += w
        assert np.allclose(result[p], numerator / weights[p].sum())


def test_cosine_weights_against_a_direct_computation():
    rng = np.random.default_rng(4)
    queries, demos = rng.normal(size=(5, 3)), rng.normal(size=(5, 4, 3))
    demos[0, 1] = 0.0  # a zero vector has similarity 0 with everything, not NaN
    got = kernels.cosine_weights(queries, demos)
    for p in range(5):
        for i in range(4):
            norm = np.linalg.norm(queries[p]) * np.linalg.norm(demos[p, i])
            assert got[p, i] == pytest.approx(queries[p] @ demos[p, i] / norm if norm else 0.0)
    np.testing.assert_allclose(kernels.unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]])), [[0.6, 0.8], [0.0, 0.0]])


def test_normalized_entropy():
    assert kernels.normalized_entropy(np.ones(8)) == pytest.approx(1.0)
    assert kernels.normalized_entropy(np.array([1.0, 0, 0, 0])) == pytest.approx(0.0)
    w = np.array([0.5, 0.25, 0.25])
    assert kernels.normalized_entropy(w * 3) == pytest.approx(-(w * np.log(w)).sum() / np.log(3))


def test_the_sink_free_kernel_ignores_position_0_only():
    att = np.array([0.6, 0.1, 0.05, 0.15, 0.02, 0.08])
    got = kernels.attention_weights(att, [0, 3], [2, 5])
    assert got["max"].tolist() == [0.6, 0.15] and got["max_nosink"].tolist() == [0.1, 0.15]
    assert got["max_nosink"][1] == got["max"][1]  # later spans are untouched
