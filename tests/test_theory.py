"""Tests of the synthetic Theorem 1 check: HMM, forward algorithm, operators, kernel, metrics, outputs."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from workflow_scripts import theory as th
from workflow_scripts.kernels import kernel_estimate


def tiny_mixture(seed: int = 3, n_inputs: int = 3, n_labels: int = 2, n_states: int = 3) -> th.HmmMixture:
    """A small random mixture with a deliberately non-uniform task prior."""
    mixture = th.random_hmm_mixture(
        seed,
        n_tasks=2,
        n_states=n_states,
        n_observations=1 + n_labels + n_inputs,
        n_labels=n_labels,
        transition_concentration=0.7,
        emission_concentration=0.7,
    )
    return th.HmmMixture(
        mixture.transition, mixture.emission, mixture.start_states, np.array([0.3, 0.7]), n_labels
    )


def brute_force_joint(mixture: th.HmmMixture, task: int, token_ids: np.ndarray) -> float:
    """P(tokens | task) by summing over every hidden path (delimiters send the chain to the start)."""
    emitting = [i for i, t in enumerate(token_ids) if t != th.DELIMITER]
    start = mixture.start_states[task]
    total = 0.0
    for path in itertools.product(range(mixture.n_states), repeat=len(emitting)):
        state_at = dict(zip(emitting, path))
        previous, probability = start, 1.0
        for position, token in enumerate(token_ids):
            if token == th.DELIMITER:
                previous = start
                continue
            state = state_at[position]
            probability *= mixture.transition[previous, state] * mixture.emission[state, token]
            previous = state
        total += probability
    return total


def brute_force_label_posterior(mixture: th.HmmMixture, token_ids: np.ndarray) -> np.ndarray:
    joint = np.array(
        [
            [
                mixture.task_prior[task] * brute_force_joint(mixture, task, np.append(token_ids, label))
                for label in mixture.label_ids
            ]
            for task in range(mixture.n_tasks)
        ]
    )
    per_label = joint.sum(axis=0)
    return per_label / per_label.sum()


# ------------------------------------------------------------------------------------- the mixture


def test_same_seed_gives_same_hmm_and_other_seed_does_not():
    sizes = dict(n_tasks=8, n_states=20, n_observations=30, n_labels=3,
                 transition_concentration=1.0, emission_concentration=1.0)
    a, b, c = (th.random_hmm_mixture(seed, **sizes) for seed in (7, 7, 8))
    for field in ("transition", "emission", "start_states"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.allclose(a.transition, c.transition)


def test_mixture_is_a_valid_hmm():
    mixture = th.random_hmm_mixture(1, 8, 80, 100, 3, 1.0, 1.0)
    assert np.allclose(mixture.transition.sum(axis=1), 1)
    assert np.allclose(mixture.emission[:, mixture.label_ids].sum(axis=1), 1)
    assert np.allclose(mixture.emission[:, mixture.input_ids].sum(axis=1), 1)
    assert np.all(mixture.emission[:, th.DELIMITER] == 0)
    assert len(set(mixture.start_states.tolist())) == mixture.n_tasks


def test_sampled_segments_follow_the_task_chain():
    mixture = tiny_mixture()
    rng = np.random.default_rng(0)
    task = 1
    x, y = th.sample_segments(mixture, np.full(40_000, task), 2, rng)
    start = np.eye(mixture.n_states)[mixture.start_states[task]]
    for pair in itertools.product(mixture.input_ids, repeat=2):
        operator = th.input_operators(mixture, np.array([pair]))[0]
        for label in range(mixture.n_labels):
            exact = start @ operator @ mixture.transition @ mixture.emission[:, 1 + label]
            observed = np.mean((x[:, 0] == pair[0]) & (x[:, 1] == pair[1]) & (y == label))
            assert abs(observed - exact) < 0.01


# ------------------------------------------------------------------------------- forward algorithm


@pytest.mark.parametrize("x_length", [1, 2])
def test_forward_posterior_matches_brute_force_enumeration(x_length):
    mixture = tiny_mixture()
    prompts = th.sample_prompts(mixture, 2, 2, x_length, np.random.default_rng(5))
    for p in range(2):
        tokens = th.prompt_token_ids(prompts.x_demos[p], prompts.y_demos[p], prompts.x_test[p])
        expected = brute_force_label_posterior(mixture, tokens)
        assert np.allclose(th.prompt_label_posterior(mixture, tokens), expected, rtol=1e-10)


def test_forward_log_likelihood_matches_brute_force():
    mixture = tiny_mixture()
    tokens = np.array([4, 5, 1, 0, 5, 2, 0, 4])
    alpha, log_weight = th.start_forward(mixture, ())
    _, log_weight = th.advance_forward(mixture, alpha, log_weight, tokens)
    expected = [np.log(mixture.task_prior[t] * brute_force_joint(mixture, t, tokens)) for t in range(2)]
    assert np.allclose(log_weight, expected)


def test_grid_posteriors_match_single_prompt_forward():
    mixture = tiny_mixture()
    prompts = th.sample_prompts(mixture, 4, 8, 2, np.random.default_rng(2))
    grid = [1, 3, 8]
    posterior, true_mass = th.posteriors_over_n(mixture, prompts, grid)
    for p in range(4):
        for column, n in enumerate(grid):
            tokens = th.prompt_token_ids(prompts.x_demos[p, :n], prompts.y_demos[p, :n], prompts.x_test[p])
            assert np.allclose(posterior[p, column], th.prompt_label_posterior(mixture, tokens))
    assert np.all((true_mass >= 0) & (true_mass <= 1))


def test_posterior_at_128_demos_sums_to_one_where_plain_probabilities_underflow():
    mixture = th.random_hmm_mixture(0, 8, 80, 100, 3, 1.0, 1.0)
    prompts = th.sample_prompts(mixture, 2, 128, 2, np.random.default_rng(1))
    tokens = np.stack(
        [th.prompt_token_ids(prompts.x_demos[p], prompts.y_demos[p], prompts.x_test[p]) for p in range(2)]
    )
    alpha, log_weight = th.start_forward(mixture, (2,))
    _, log_weight = th.advance_forward(mixture, alpha, log_weight, tokens)
    assert np.all(np.isfinite(log_weight))
    assert np.all(np.exp(log_weight) == 0.0)  # an unscaled forward pass would have lost everything
    posterior, _ = th.posteriors_over_n(mixture, prompts, [128])
    assert np.all(np.isfinite(posterior)) and np.all(posterior >= 0)
    assert np.allclose(posterior.sum(axis=-1), 1.0)


# -------------------------------------------------------------------------------------- operators


def test_operator_product_gives_the_sequence_probability():
    mixture = tiny_mixture()
    for task in range(mixture.n_tasks):
        start = np.eye(mixture.n_states)[mixture.start_states[task]]
        total = 0.0
        for x in itertools.product(mixture.input_ids, repeat=3):
            via_operator = start @ th.input_operators(mixture, np.array([x]))[0] @ np.ones(mixture.n_states)
            assert np.isclose(via_operator, brute_force_joint(mixture, task, np.array(x)))
            total += via_operator
        assert np.isclose(total, 1.0)  # the input slots form a distribution over inputs


def test_batched_operators_match_explicit_matrix_products():
    mixture = tiny_mixture(n_states=4)
    x = np.random.default_rng(0).choice(mixture.input_ids, size=(6, 4))
    batched = th.input_operators(mixture, x)
    for row, tokens in enumerate(x):
        explicit = np.linalg.multi_dot([mixture.transition @ np.diag(mixture.emission[:, t]) for t in tokens])
        assert np.allclose(batched[row], explicit)
    assert np.allclose(th.operator_features(mixture, x), batched.reshape(6, -1))


# ----------------------------------------------------------------------------------------- kernel


@pytest.mark.parametrize("n_samples,center", [(5, True), (40, True), (40, False)])
def test_kernel_is_symmetric_and_equals_the_explicit_inverse(n_samples, center):
    rng = np.random.default_rng(4)
    samples = rng.normal(size=(n_samples, 9)) + 3.0
    precision = th.fit_ridge_precision(samples, relative_ridge=1e-2, center=center)
    centred = samples - samples.mean(axis=0) if center else samples
    sigma = centred.T @ centred / n_samples
    explicit = np.linalg.inv(sigma + 1e-2 * np.trace(sigma) / 9 * np.eye(9))
    points = rng.normal(size=(7, 9))
    kernel = th.kernel_matrix(precision, points, points)
    assert np.allclose(kernel, kernel.T)
    assert np.allclose(kernel, points @ explicit @ points.T)
    assert np.linalg.eigvalsh((kernel + kernel.T) / 2).min() > -1e-8 * np.abs(kernel).max()


def test_operator_kernel_is_symmetric_between_inputs():
    mixture = th.random_hmm_mixture(2, 4, 10, 20, 3, 1.0, 1.0)
    rng = np.random.default_rng(0)
    features = th.operator_features(mixture, th.sample_pretraining_inputs(mixture, 300, 2, rng))
    precision = th.fit_ridge_precision(features, 1e-3, center=True)
    x = th.operator_features(mixture, th.sample_uniform_inputs(mixture, 12, 2, rng))
    kernel = th.kernel_matrix(precision, x, x)
    assert np.allclose(kernel, kernel.T, rtol=1e-6, atol=1e-8 * np.abs(kernel).max())


def test_kernel_regression_prefixes_match_the_estimate_on_each_prefix():
    rng = np.random.default_rng(9)
    weights = rng.normal(size=(5, 11))  # negative weights included on purpose
    labels = rng.integers(0, 4, size=(5, 11))
    prefixes = th.kernel_regression_prefixes(weights, labels, 4, [1, 4, 11])
    for column, n in enumerate([1, 4, 11]):
        assert np.allclose(prefixes[:, column], kernel_estimate(weights[:, :n], labels[:, :n], 4))


def test_uniform_second_moment_kernel_regression_tends_to_the_task_prediction():
    # Theorem 1's limit is exact when Sigma is the unweighted second moment of vec(T_x): check it
    # where few distinct inputs exist, so that many demonstrations reach the limit.
    mixture = tiny_mixture(n_inputs=2)
    rng = np.random.default_rng(11)
    every_input = np.array(list(itertools.product(mixture.input_ids, repeat=2)))
    precision = th.fit_ridge_precision(th.operator_features(mixture, every_input), 1e-9, center=False)
    task = 0
    x, y = th.sample_segments(mixture, np.full(50_000, task), 2, rng)
    x_test = every_input[1:2]
    weights = th.kernel_matrix(precision, th.operator_features(mixture, x_test), th.operator_features(mixture, x))
    prediction = kernel_estimate(weights[0], y, mixture.n_labels)
    start = np.eye(mixture.n_states)[mixture.start_states[task]]
    joint = start @ th.input_operators(mixture, x_test)[0] @ mixture.transition @ mixture.emission[:, mixture.label_ids]
    assert np.abs(prediction - joint / joint.sum()).sum() < 0.03


# ---------------------------------------------------------------------------------------- metrics


def test_distance_and_agreement():
    prediction = np.array([[0.2, 0.8], [1.5, -0.5], [np.nan, np.nan]])
    posterior = np.array([[0.5, 0.5001], [0.4, 0.6], [0.5, 0.5]])
    assert np.allclose(th.l1_distance(prediction, posterior)[:2], [0.5999, 2.2])
    assert th.l1_distance(prediction, posterior)[2] == np.inf
    assert th.argmax_agreement(prediction, posterior).tolist() == [1.0, 0.0, 0.0]


def test_hierarchical_bootstrap_interval():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(4, 50)) + np.array([[0.0], [1.0], [2.0], [3.0]])
    mean, low, high = th.hierarchical_bootstrap_ci(values, 500, 0.95, rng)
    assert low < mean < high
    pooled = values - values.mean(axis=1, keepdims=True) + 1.5  # same spread within, none between
    _, flat_low, flat_high = th.hierarchical_bootstrap_ci(pooled, 500, 0.95, rng)
    assert (flat_high - flat_low) < (high - low)  # spread between HMMs widens the interval
    assert th.hierarchical_bootstrap_ci(np.full((3, 5), 0.25), 100, 0.9, rng) == (0.25, 0.25, 0.25)


# ------------------------------------------------------------------------------------ end to end


def small_params() -> dict:
    return dict(
        hmm_seeds=[0, 1], n_tasks=3, n_states=6, n_observations=12, n_labels=3, x_length=2,
        transition_concentration=1.0, emission_concentration=1.0, n_demos=[1, 2, 4, 8],
        n_prompts=20, sigma_samples=100, ridge=1e-3, kernels=list(th.THEOREM_KERNELS),
        bootstrap_resamples=50, ci_level=0.9, bootstrap_seed=0,
    )


def test_from_snakemake_writes_table_figure_and_summary(tmp_path):
    outputs = {name: tmp_path / "theory" / file for name, file in
               [("table", "table.parquet"), ("figure", "convergence.png"), ("summary", "summary.md")]}
    smk = SimpleNamespace(params=SimpleNamespace(theory=small_params()), output=SimpleNamespace(**outputs))
    th.from_snakemake(smk)
    table = pq.read_table(outputs["table"]).to_pandas()
    assert set(table["kernel"]) == set(th.THEOREM_KERNELS)
    pooled = table[table["hmm_seed"].isna()]
    assert sorted(pooled["n_demos"].unique()) == [1, 2, 4, 8] and len(pooled) == 4 * len(th.THEOREM_KERNELS)
    assert len(table) == 3 * len(pooled)
    assert (pooled["distance_ci_low"] <= pooled["distance_mean"] + 1e-12).all()
    assert (pooled["agreement_ci_high"] >= pooled["agreement_mean"] - 1e-12).all()
    assert pooled.loc[pooled["n_demos"] == 8, "paper_agreement"].iloc[0] == 0.901
    # With one demonstration every kernel predicts e(y_1), whatever its sign.
    at_one = pooled[pooled["n_demos"] == 1]
    assert np.allclose(at_one["distance_mean"], at_one["distance_mean"].iloc[0])
    assert outputs["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = outputs["summary"].read_text()
    assert "L1" in summary and "| 8 | 0.218 |" in summary


def test_same_params_give_identical_results():
    params = small_params()
    first, second = th.run_seed(params, 1), th.run_seed(params, 1)
    for kernel in th.THEOREM_KERNELS:
        assert np.array_equal(first.distance[kernel], second.distance[kernel])
