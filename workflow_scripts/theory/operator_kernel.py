"""The kernel side of the Theorem 1 check: observable operators, the operator kernel
K(x, x') = vec(T_x)^T Sigma^{-1} vec(T_x') and the other kernels it is compared with, and kernel
regression over a prompt's demonstrations.

- Observable operator of a token o: T diag(E[:, o]); T_x is their product over x, so
  P(x | task) = e_s^T T_x 1 and P(x, y | task) = e_s^T T_x T E[:, y].
- Kernel regression: y_hat = sum_i e(y_i) K(x_test, x_i) / sum_i K(x_test, x_i), with Sigma estimated
  from sampled x and a ridge relative to its mean eigenvalue. Sigma^{-1} makes some K negative;
  they are used as they are (the prediction may leave the simplex) and counted in the table.

Why more than one kernel is reported: with X ~ task, sum_x P(x, y) vec(T_x) = M a_y where
M = sum_x vec(T_x) vec(T_x)^T over ALL inputs (unweighted). So the kernel-regression limit equals the
task's P(y | x_test) exactly when Sigma is proportional to that uniform second moment, and only
approximately for the pretraining covariance the paper names. The constant kernel (label frequency)
shows how much of the agreement needs no input similarity at all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg import cho_solve

from workflow_scripts.theory.hmm import HmmMixture, PromptBatch, random_stream, sample_pretraining_inputs, sample_uniform_inputs

THEOREM_KERNELS = ("pretraining_covariance", "uniform_second_moment", "constant")
PRIMARY_KERNEL = "pretraining_covariance"


# --------------------------------------------------------------------------------------- operators


def input_operators(mixture: HmmMixture, x: np.ndarray) -> np.ndarray:
    """T_x = prod_j T diag(E[:, x_j]) for a batch of inputs x (m, length) -> (m, S, S)."""
    columns = mixture.emission[:, x]  # (S, m, length)
    single = mixture.transition[None] * mixture.emission.T[:, None, :]  # T diag(E[:, o]) for every o
    if x.shape[1] == 1:
        return single[x[:, 0]]
    # The first two factors come from a per-token table, so the common x_length = 2 needs no
    # per-input matrix product at all (the batched 80 x 80 products dominated the run time).
    product = (single @ mixture.transition)[x[:, 0]] * columns[:, :, 1].T[:, None, :]
    for position in range(2, x.shape[1]):
        product = (product @ mixture.transition) * columns[:, :, position].T[:, None, :]
    return product


def operator_features(mixture: HmmMixture, x: np.ndarray, support: np.ndarray | None = None) -> np.ndarray:
    """vec(T_x) for a batch of inputs: (m, S * S), or only the coordinates in `support`."""
    features = input_operators(mixture, x).reshape(x.shape[0], -1)
    # An all-True mask would still copy every feature; the shared HMM's support is everything.
    return features if support is None or support.all() else features[:, support]


def feature_support(mixture: HmmMixture, x_length: int) -> np.ndarray:
    """The entries of vec(T_x) that some input x can make nonzero: the pattern of T^x_length.

    T_x = T D_1 T D_2 ... with nonnegative diagonal D_j, so it is zero wherever T^x_length is. Without
    leakage a block HMM keeps 1 / n_tasks of the S^2 entries; dropping the rest from the kernel's
    features changes no kernel value (those coordinates are zero in every sample and every input)
    and makes the block variants several times cheaper.
    """
    reach = (mixture.transition > 0).astype(float)
    pattern = reach
    for _ in range(x_length - 1):
        pattern = (pattern @ reach > 0).astype(float)
    return pattern.ravel() > 0


# -------------------------------------------------------------------- the precision and the kernel


@dataclass(frozen=True)
class RidgePrecision:
    """(Sigma_hat + ridge I)^{-1} as a Cholesky factor, Sigma_hat = C^T C / N from N sample rows C.

    Whichever side is smaller gets factorised: Sigma is d x d with d = S^2 (6400 at the defaults)
    while N is a few thousand, so there the N x N dual system of the Woodbury identity is used; a
    block HMM's features keep only d / n_tasks entries (feature_support), fewer than N, and then
    the d x d system itself is. The inverse is never formed.
    """

    samples: np.ndarray  # C, (N, d): centred (covariance) or raw (second moment) sample features
    cholesky: np.ndarray  # lower factor of N * ridge * I + C C^T (dual) or ridge * I + C^T C / N (primal)
    ridge: float
    primal: bool


def fit_ridge_precision(
    features: np.ndarray, relative_ridge: float, center: bool, dim: int | None = None
) -> RidgePrecision:
    """Estimate Sigma from sample features and regularise it by relative_ridge * trace(Sigma) / d.

    A relative ridge keeps the choice independent of the scale of T_x, which shrinks geometrically
    with the input length. `dim` is d when the features hold only the coordinates that can be
    nonzero (feature_support): the ridge stays that of the full S^2-dimensional Sigma.
    """
    samples = features - features.mean(axis=0) if center else features
    n_samples, n_features = samples.shape
    dim = n_features if dim is None else dim
    primal = n_features < n_samples
    gram = samples.T @ samples / n_samples if primal else samples @ samples.T
    ridge = relative_ridge * np.trace(gram) / ((1 if primal else n_samples) * dim)
    if not ridge > 0:
        raise ValueError("the sampled covariance is zero; cannot regularise it relative to its trace")
    system = gram + (1 if primal else n_samples) * ridge * np.eye(gram.shape[0])
    return RidgePrecision(samples, np.linalg.cholesky(system), float(ridge), primal)


def apply_precision(precision: RidgePrecision, vectors: np.ndarray) -> np.ndarray:
    """(Sigma_hat + ridge I)^{-1} v for rows v of (m, d): directly, or via Woodbury from the dual."""
    if precision.primal:
        return cho_solve((precision.cholesky, True), vectors.T).T
    projected = vectors @ precision.samples.T  # (m, N)
    solved = cho_solve((precision.cholesky, True), projected.T).T
    return (vectors - solved @ precision.samples) / precision.ridge


def kernel_matrix(precision: RidgePrecision, features_a: np.ndarray, features_b: np.ndarray) -> np.ndarray:
    """K[i, j] = vec(T_a_i)^T Sigma^{-1} vec(T_b_j)."""
    return apply_precision(precision, features_a) @ features_b.T


def fit_kernel(
    mixture: HmmMixture, kernel: str, params: dict[str, Any], seed: int, support: np.ndarray | None = None
) -> RidgePrecision | None:
    """The precision behind each kernel variant (None for the constant kernel), on the features in `support`."""
    if kernel == "constant":
        return None
    rng = random_stream(seed, kernel)
    dim = mixture.n_states**2
    if kernel == "pretraining_covariance":
        x = sample_pretraining_inputs(mixture, params["sigma_samples"], params["x_length"], rng)
        return fit_ridge_precision(operator_features(mixture, x, support), params["ridge"], center=True, dim=dim)
    if kernel == "uniform_second_moment":
        x = sample_uniform_inputs(mixture, params["sigma_samples"], params["x_length"], rng)
        return fit_ridge_precision(operator_features(mixture, x, support), params["ridge"], center=False, dim=dim)
    raise ValueError(f"config key 'theory.kernels': unknown kernel {kernel!r}; expected one of {THEOREM_KERNELS}")


# ------------------------------------------------------------------------------- kernel regression


def kernel_regression_prefixes(
    weights: np.ndarray, labels: np.ndarray, n_labels: int, n_grid: list[int]
) -> np.ndarray:
    """Kernel regression on the first n demonstrations for each n in n_grid: (P, len(n_grid), L)."""
    one_hot = np.eye(n_labels)[labels]
    numerators = np.cumsum(weights[..., None] * one_hot, axis=1)
    denominators = np.cumsum(weights, axis=1)
    rows = np.asarray(n_grid) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        return numerators[:, rows] / denominators[:, rows, None]


def demo_kernel_weights(
    mixture: HmmMixture,
    prompts: PromptBatch,
    precisions: dict[str, RidgePrecision | None],
    support: np.ndarray | None = None,
    chunk: int = 16,
) -> dict[str, np.ndarray]:
    """K(x_test, x_i) for every prompt and demonstration, per kernel: (P, n_max) each.

    None stands for the constant kernel. Chunked because vec(T_x) of every demonstration at once
    would take gigabytes; the chunk's features are shared by all kernels. `support`: the feature
    coordinates the precisions were fitted on.
    """
    n_prompts, n_max, x_length = prompts.x_demos.shape
    weights = {name: np.ones((n_prompts, n_max)) for name in precisions}
    fitted = {name: p for name, p in precisions.items() if p is not None}
    if not fitted:
        return weights
    test_features = operator_features(mixture, prompts.x_test, support)
    directions = {name: apply_precision(p, test_features) for name, p in fitted.items()}
    for start in range(0, n_prompts, chunk):
        stop = min(start + chunk, n_prompts)
        demo_features = operator_features(mixture, prompts.x_demos[start:stop].reshape(-1, x_length), support)
        demo_features = demo_features.reshape(stop - start, n_max, -1)
        for name, direction in directions.items():
            weights[name][start:stop] = np.einsum("pnd,pd->pn", demo_features, direction[start:stop])
    return weights
