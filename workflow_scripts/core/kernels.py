"""The kernel view in one place: y_hat = sum_i K(x_test, x_i) e(y_i) / sum_i K(x_test, x_i).

Kernel weights come from a head's last-token attention over each demonstration (Section 5.2's three
readings) or from cosine similarity of vectors (the encoder and hidden-state baselines of Table 2).
Reconstruction, Table 2, the ablations and the theory's check all vote through these functions.
"""
from __future__ import annotations

import numpy as np

# Readings of a demonstration's kernel weight a_i off a head's attention row: the paper's maximum over
# the span [x_i, y_i], the attention on the label token y_i alone, the mean over the span, and the
# paper's maximum without position 0. Without a BOS token the first span starts at position 0, the
# model's attention sink, whose weight has nothing to do with demonstration 1's input.
ATTENTION_KERNELS = ("max", "label", "mean", "max_nosink")


def attention_weights(attention: np.ndarray, x_start, y_pos) -> dict[str, np.ndarray]:
    """Kernel weights (..., k) of each attention kernel from attention rows (..., T); spans are [x_start, y_pos]."""
    spans = [attention[..., s : y + 1] for s, y in zip(x_start, y_pos)]
    return {
        "max": np.stack([s.max(axis=-1) for s in spans], axis=-1),
        "label": attention[..., np.asarray(y_pos)],
        "mean": np.stack([s.mean(axis=-1) for s in spans], axis=-1),
        "max_nosink": np.stack([attention[..., max(s, min(1, y)) : y + 1].max(axis=-1) for s, y in zip(x_start, y_pos)], axis=-1),
    }


def kernel_estimate(weights: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """sum_i w_i e(y_i) / sum_i w_i over the last axis: (..., n_classes). Weights may be negative and
    are kept as they are; a zero sum gives inf or nan."""
    one_hot = np.eye(n_classes)[np.asarray(labels)]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.einsum("...k,...kc->...c", weights, one_hot) / weights.sum(axis=-1, keepdims=True)


def kernel_vote(weights: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """argmax of kernel_estimate: the kernel-regression prediction. Computed without the division,
    which cannot move the argmax when the weights sum to more than zero and reverses it below zero."""
    votes = np.einsum("...k,...kc->...c", weights, np.eye(n_classes)[np.asarray(labels)])
    flip = weights.sum(axis=-1, keepdims=True) < 0
    return np.argmax(np.where(flip, -votes, votes), axis=-1)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """x scaled to unit length along its last axis (zero vectors stay zero), in float64."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x, dtype=np.float64), where=norms > 0)


def cosine_weights(queries: np.ndarray, demos: np.ndarray) -> np.ndarray:
    """K(x_test, x_i) = cos(v(x_test), v(x_i)) for queries (P, D) and their demonstrations (P, k, D): (P, k)."""
    return np.einsum("pd,pkd->pk", unit_rows(queries), unit_rows(demos))


def normalized_entropy(weights: np.ndarray) -> float:
    """The kernel's bandwidth: entropy of weights / sum(weights), divided by log(k) (1 = uniform over
    the demonstrations, lower = a narrower kernel)."""
    p = weights / weights.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(len(weights))) if len(weights) > 1 else 0.0
