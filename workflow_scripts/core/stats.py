"""Statistics shared by the analyses: bootstrap intervals, Pearson correlations (one-shot and
streaming over many attention heads), ridge regression and the paper's grouped, cross-validated
linear probe, scored by accuracy and balanced accuracy, with a label-shuffled control.

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


# A percentile bootstrap over fewer examples than this can collapse to a point (one held-out prompt
# gives 1.000 [1.000, 1.000]) or swing with a single example: the report marks such intervals and
# draws no verdict from them.
MIN_EXAMPLES = 20


def too_few(n_examples: float) -> bool:
    return n_examples < MIN_EXAMPLES


def too_few_text(n_examples: float, what: str, key: str) -> str:
    """The sentence that stands where a verdict would."""
    return (f"**Too few to read:** {int(n_examples)} {what} ({key}), fewer than {MIN_EXAMPLES}; an interval over so few "
            "examples can collapse to a point, so no verdict is drawn. Raise the key for numbers to read.")


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Probabilities from logits along `axis`, shifted by the maximum so no exp overflows."""
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


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


def hierarchical_bootstrap_ci(grid: np.ndarray, n_resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval for the mean of `grid` (examples x seeds), resampling seeds and then
    examples: the variation between seeds (their demonstrations, the head each chose) widens it, which
    resampling examples of the seed-averaged value ignores. With one seed it is the examples' interval."""
    grid = np.asarray(grid, dtype=np.float64)
    n_examples, n_seeds = grid.shape
    if grid.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // (n_examples * n_seeds))
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, n_resamples - start)
        seeds = rng.integers(0, n_seeds, size=(rows, n_seeds))
        examples = rng.integers(0, n_examples, size=(rows, n_examples))
        per_seed = grid[examples].mean(axis=1)  # (rows, seeds): each seed's mean over the resampled examples
        means[start : start + rows] = np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def ragged_hierarchical_bootstrap_ci(groups: list[np.ndarray], n_resamples: int, seed: int | np.random.Generator,
                                     level: float = 0.95) -> tuple[float, float]:
    """Percentile interval for the mean of nested values: groups that each hold items of their own
    (seeds holding out different examples, random HMMs with their own prompts). The two-stage
    bootstrap: groups are resampled, then the items of every drawn group afresh, so a group drawn
    twice gets two resamples of its items. `seed` may be a Generator, to go on drawing from a stream
    shared with other intervals."""
    groups = [np.asarray(g, dtype=np.float64).ravel() for g in groups]
    if not groups or any(g.size == 0 for g in groups):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(groups), size=(n_resamples, len(groups)))
    sizes = {g.size for g in groups}
    if len(sizes) == 1:  # equal sizes: every draw at once, each drawn group's items as its own row
        n_items = sizes.pop()
        items = rng.integers(0, n_items, size=(n_resamples, len(groups), n_items))
        means = np.stack(groups)[drawn[..., None], items].mean(axis=(1, 2))
    else:
        means = np.array([np.mean([groups[g][rng.integers(0, groups[g].size, size=groups[g].size)].mean() for g in row])
                          for row in drawn])
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


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean per-class recall over the classes present in `labels` (n,), for predictions (..., n).

    A constant answer scores 1 / (classes present) however skewed the labels are, which is what makes
    it readable where plain accuracy sits at the majority share. Returns shape (...).
    """
    predicted = np.asarray(predicted)
    labels = np.asarray(labels)
    onehot = _one_hot(labels, n_classes)  # (n, C)
    counts = onehot.sum(axis=0)
    present = counts > 0
    hits = (predicted == labels).astype(np.float64) @ onehot  # (..., C): correct answers per true class
    return (hits[..., present] / counts[present]).mean(axis=-1)


def shuffle_by_group(labels: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """Targets permuted across groups, so the grouping still holds: every sample of group g takes its
    target from one other group, pi(g), for a random permutation pi of the groups (the j-th sample of g
    gets the (j mod size)-th target of pi(g), in sample order). Where each group has one target, as a
    demonstration example has one zero-shot answer, this permutes the groups' targets exactly.

    The generator is seeded by [seed, 1], so it never repeats the permutation group_folds draws from `seed`.
    """
    labels = np.asarray(labels)
    _, group_index = np.unique(np.asarray(groups).ravel(), return_inverse=True)
    n_groups = group_index.max() + 1 if group_index.size else 0
    members = [np.flatnonzero(group_index == g) for g in range(n_groups)]
    source = np.random.default_rng([seed, 1]).permutation(n_groups)
    shuffled = np.empty_like(labels)
    for g, rows in enumerate(members):
        donor = members[source[g]]
        shuffled[rows] = labels[donor[np.arange(rows.size) % donor.size]]
    return shuffled


def probe_predictions(
    X: np.ndarray, labels: np.ndarray, groups: np.ndarray, n_classes: int, lam: float, n_folds: int, seed: int
) -> np.ndarray:
    """Grouped cross-validated predictions of a ridge probe from features X (n, d) to one-hot labels,
    argmax decoded: each sample is predicted by the model fitted on the folds without its group."""
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    targets = _one_hot(labels, n_classes)
    folds = group_folds(groups, n_folds, seed)
    predicted = np.empty(labels.shape, dtype=np.int64)
    for fold in range(n_folds):
        test = folds == fold
        W, b = ridge_fit(X[~test], targets[~test], lam)
        predicted[test] = ridge_predict(X[test], W, b).argmax(axis=-1)
    return predicted


def probe_accuracy(
    X: np.ndarray, labels: np.ndarray, groups: np.ndarray, n_classes: int, lam: float, n_folds: int, seed: int
) -> float:
    """Grouped cross-validated accuracy of a ridge probe from features X (n, d) to one-hot labels, argmax decoded."""
    predicted = probe_predictions(X, labels, groups, n_classes, lam, n_folds, seed)
    return float(np.mean(predicted == np.asarray(labels)))


def probe_predictions_many(
    X: np.ndarray, label_sets: list[np.ndarray], groups: np.ndarray, n_classes: int, lam: float, n_folds: int, seed: int
) -> np.ndarray:
    """probe_predictions for every leading index of X (..., n, d) and every target vector in
    label_sets at once; returns shape (..., len(label_sets), n).

    The target vectors share the folds and therefore each fold's Gram matrix: they are solved as
    extra right-hand sides of one ridge system, so a second target (the shuffled control) costs a few
    columns, not a second fit. Ridge fits each output column separately, so every target's
    predictions are those of its own probe. The stack is processed in blocks of _CHUNK_ELEMENTS so the
    float64 copies and centred temporaries stay bounded however many layers, heads and offsets there are.
    """
    X = np.asarray(X)
    batch_shape, (n, d) = X.shape[:-2], X.shape[-2:]
    label_sets = [np.asarray(labels) for labels in label_sets]
    targets = np.concatenate([_one_hot(labels, n_classes) for labels in label_sets], axis=1)  # (n, sets * C)
    n_sets = len(label_sets)
    folds = group_folds(groups, n_folds, seed)
    flat = X.reshape(-1, n, d)
    predicted = np.empty((flat.shape[0], n_sets, n), dtype=np.int64)
    per_chunk = max(1, _CHUNK_ELEMENTS // (n * d))
    for start in range(0, flat.shape[0], per_chunk):
        block = flat[start : start + per_chunk].astype(np.float64)
        for fold in range(n_folds):
            test = folds == fold
            W, b = _ridge_weights(block[:, ~test], targets[~test], lam)
            scores = block[:, test] @ W + b[:, None, :]  # (chunk, n_test, sets * C)
            scores = scores.reshape(*scores.shape[:2], n_sets, n_classes)
            predicted[start : start + per_chunk, :, test] = scores.argmax(axis=-1).transpose(0, 2, 1)
    return predicted.reshape(*batch_shape, n_sets, n)


def probe_scores_many(
    X: np.ndarray, labels: np.ndarray, groups: np.ndarray, n_classes: int, lam: float, n_folds: int, seed: int
) -> dict[str, np.ndarray]:
    """Accuracy and balanced accuracy of the grouped cross-validated probe for every leading index of
    X (..., n, d), and the balanced accuracy of its label-shuffled control: the same probe (same
    folds) fitted on the targets permuted across groups (shuffle_by_group, seeded by `seed`), one
    permutation shared by the whole stack. Each array has shape (...)."""
    labels = np.asarray(labels)
    shuffled = shuffle_by_group(labels, groups, seed)
    predicted = probe_predictions_many(X, [labels, shuffled], groups, n_classes, lam, n_folds, seed)
    real, control = predicted[..., 0, :], predicted[..., 1, :]
    return {
        "accuracy": (real == labels).mean(axis=-1),
        "balanced_accuracy": balanced_accuracy(real, labels, n_classes),
        "shuffled_accuracy": (control == shuffled).mean(axis=-1),
        "shuffled_balanced_accuracy": balanced_accuracy(control, shuffled, n_classes),
    }
