"""Statistics shared by the analyses: bootstrap intervals, Pearson correlations (one-shot and
streaming over many attention heads), ridge regression and the paper's grouped, cross-validated
linear probe.

Everything is plain numpy. A demonstration's example id appears in several prompts, so the probe
splits folds by example id: a sample is never predicted by a model that was fitted on a copy of it.
"""
from __future__ import annotations

import numpy as np

# Bound on the number of elements in one temporary block (index matrix, feature chunk): 2**22
# float64 values are 32 MiB, small enough for any worker and large enough to keep numpy vectorised.
_CHUNK_ELEMENTS = 2**22

# Sums of squares in float64 lose ~1e-16 relative precision per term, so n*Sxx - Sx^2 of a constant
# series comes out as rounding noise instead of 0; anything this small relative to n*Sxx is constant.
_ZERO_VARIANCE_RTOL = 1e-10


def bootstrap_ci(values: np.ndarray, n_resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of per-example values, resampling examples.

    Resamples are drawn in blocks of rows so the index matrix stays within _CHUNK_ELEMENTS for any n;
    the draws come from one generator in sequence, so the result depends only on the seed.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    n = values.size
    if n == 0:
        return float("nan"), float("nan")
    if n_resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need n_resamples >= 1 and 0 < level < 1, got {n_resamples} and {level}")
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, n_resamples - start)
        means[start : start + rows] = values[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two 1-D arrays; nan for fewer than 2 points or a constant series."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"x and y differ in length: {x.size} vs {y.size}")
    # An exact test for constancy: the mean of a constant is not always that constant in floating point.
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    dx = x - x.mean()
    dy = y - y.mean()
    r = (dx @ dy) / np.sqrt((dx @ dx) * (dy @ dy))
    return float(np.clip(r, -1.0, 1.0))


class PearsonAccumulator:
    """Pearson correlations of many pairs of series at once, fed observations in chunks.

    Keeps float64 sums of x, y, x^2, y^2 and xy per cell; fine for the bounded values here (kernel
    weights and similarities in [0, 1]), where cancellation in n*Sxx - Sx^2 stays far from harmful.
    """

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(shape)
        self.count = 0
        self._sx = np.zeros(self.shape)
        self._sy = np.zeros(self.shape)
        self._sxx = np.zeros(self.shape)
        self._syy = np.zeros(self.shape)
        self._sxy = np.zeros(self.shape)

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add m observations per cell: x and y broadcast to shape + (m,), e.g. x of shape (m,) shared by all cells."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        m = np.broadcast_shapes(x.shape[-1:], y.shape[-1:])[0]
        full = self.shape + (m,)
        xb = np.broadcast_to(x, full)
        yb = np.broadcast_to(y, full)
        self._sx += xb.sum(axis=-1)
        self._sy += yb.sum(axis=-1)
        self._sxx += (xb * xb).sum(axis=-1)
        self._syy += (yb * yb).sum(axis=-1)
        self._sxy += (xb * yb).sum(axis=-1)
        self.count += m

    def result(self) -> np.ndarray:
        """Correlation per cell, nan where either series is constant or fewer than 2 observations were added."""
        n = self.count
        if n < 2:
            return np.full(self.shape, np.nan)
        var_x = n * self._sxx - self._sx**2
        var_y = n * self._syy - self._sy**2
        cov = n * self._sxy - self._sx * self._sy
        degenerate = (var_x <= _ZERO_VARIANCE_RTOL * n * self._sxx) | (var_y <= _ZERO_VARIANCE_RTOL * n * self._syy)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = cov / np.sqrt(var_x * var_y)
        return np.where(degenerate, np.nan, np.clip(r, -1.0, 1.0))


def _ridge_weights(X: np.ndarray, Y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with an unpenalised intercept for a stack of problems: X (..., n, d), Y (..., n, k) -> W (..., d, k), b (..., k)."""
    x_mean = X.mean(axis=-2, keepdims=True)
    y_mean = Y.mean(axis=-2, keepdims=True)
    Xc = X - x_mean
    Xc_t = np.swapaxes(Xc, -1, -2)
    gram = Xc_t @ Xc + lam * np.eye(X.shape[-1])
    W = np.linalg.solve(gram, Xc_t @ (Y - y_mean))
    b = (y_mean - x_mean @ W)[..., 0, :]
    return W, b


def ridge_fit(X: np.ndarray, Y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression of Y (n,) or (n, k) on X (n, d), intercept not penalised; returns (W, b)."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        W, b = _ridge_weights(X, Y[:, None], lam)
        return W[:, 0], b[0]
    return _ridge_weights(X, Y, lam)


def ridge_predict(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Predictions X @ W + b of a model from ridge_fit."""
    return X @ W + b


def group_folds(groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold index per sample, keeping each group in one fold; groups are shuffled and dealt round-robin."""
    if n_folds < 2:
        raise ValueError(f"cross-validation needs n_folds >= 2, got {n_folds}")
    unique, group_index = np.unique(np.asarray(groups).ravel(), return_inverse=True)
    if unique.size < n_folds:
        raise ValueError(
            f"only {unique.size} distinct groups for {n_folds} folds: every fold needs at least one group"
        )
    order = np.random.default_rng(seed).permutation(unique.size)
    fold_of_group = np.empty(unique.size, dtype=np.int64)
    fold_of_group[order] = np.arange(unique.size) % n_folds
    return fold_of_group[group_index]


def _one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got range [{labels.min()}, {labels.max()}]")
    return np.eye(n_classes)[labels]


def probe_accuracy(
    X: np.ndarray, labels: np.ndarray, groups: np.ndarray, n_classes: int, lam: float, n_folds: int, seed: int
) -> float:
    """Grouped cross-validated accuracy of a ridge probe from features X (n, d) to one-hot labels, argmax decoded."""
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    targets = _one_hot(labels, n_classes)
    folds = group_folds(groups, n_folds, seed)
    predicted = np.empty(labels.shape, dtype=np.int64)
    for fold in range(n_folds):
        test = folds == fold
        W, b = ridge_fit(X[~test], targets[~test], lam)
        predicted[test] = ridge_predict(X[test], W, b).argmax(axis=-1)
    return float(np.mean(predicted == labels))


def probe_accuracy_many(
    X: np.ndarray, labels: np.ndarray, groups: np.ndarray, n_classes: int, lam: float, n_folds: int, seed: int
) -> np.ndarray:
    """probe_accuracy for every leading index of X (..., n, d) at once; returns shape (...).

    The stack is processed in blocks of _CHUNK_ELEMENTS so the float64 copies and centred
    temporaries stay bounded however many layers, heads and offsets there are.
    """
    X = np.asarray(X)
    batch_shape, (n, d) = X.shape[:-2], X.shape[-2:]
    labels = np.asarray(labels)
    targets = _one_hot(labels, n_classes)
    folds = group_folds(groups, n_folds, seed)
    flat = X.reshape(-1, n, d)
    correct = np.zeros(flat.shape[0], dtype=np.int64)
    per_chunk = max(1, _CHUNK_ELEMENTS // (n * d))
    for start in range(0, flat.shape[0], per_chunk):
        block = flat[start : start + per_chunk].astype(np.float64)
        for fold in range(n_folds):
            test = folds == fold
            W, b = _ridge_weights(block[:, ~test], targets[~test], lam)
            predicted = (block[:, test] @ W + b[:, None, :]).argmax(axis=-1)
            correct[start : start + per_chunk] += (predicted == labels[test]).sum(axis=-1)
    return (correct / n).reshape(batch_shape)
