"""Tests of the synthetic Theorem 1 check: HMM, forward algorithm, operators, kernel, metrics, outputs."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from workflow_scripts.core import paper, tables
from workflow_scripts.core.config import ConfigError, theory_defaults
from workflow_scripts.core.kernels import kernel_estimate
from workflow_scripts.theory import forward, hmm, metrics, operator_kernel, study, verdicts
from workflow_scripts.theory import variants as theory_variants


def tiny_mixture(seed: int = 3, n_inputs: int = 3, n_labels: int = 2, n_states: int = 3) -> hmm.HmmMixture:
    """A small random mixture with a deliberately non-uniform task prior."""
    mixture = hmm.random_hmm_mixture(
        seed,
        n_tasks=2,
        n_states=n_states,
        n_observations=1 + n_labels + n_inputs,
        n_labels=n_labels,
        transition_concentration=0.7,
        emission_concentration=0.7,
    )
    return hmm.HmmMixture(
        mixture.transition, mixture.emission, mixture.start_states, np.array([0.3, 0.7]), n_labels
    )


def brute_force_joint(mixture: hmm.HmmMixture, task: int, token_ids: np.ndarray) -> float:
    """P(tokens | task) by summing over every hidden path (delimiters send the chain to the start)."""
    emitting = [i for i, t in enumerate(token_ids) if t != hmm.DELIMITER]
    start = mixture.start_states[task]
    total = 0.0
    for path in itertools.product(range(mixture.n_states), repeat=len(emitting)):
        state_at = dict(zip(emitting, path))
        previous, probability = start, 1.0
        for position, token in enumerate(token_ids):
            if token == hmm.DELIMITER:
                previous = start
                continue
            state = state_at[position]
            probability *= mixture.transition[previous, state] * mixture.emission[state, token]
            previous = state
        total += probability
    return total


def brute_force_label_posterior(mixture: hmm.HmmMixture, token_ids: np.ndarray) -> np.ndarray:
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
    a, b, c = (hmm.random_hmm_mixture(seed, **sizes) for seed in (7, 7, 8))
    for field in ("transition", "emission", "start_states"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.allclose(a.transition, c.transition)


def test_mixture_is_a_valid_hmm():
    mixture = hmm.random_hmm_mixture(1, 8, 80, 100, 3, 1.0, 1.0)
    assert np.allclose(mixture.transition.sum(axis=1), 1)
    assert np.allclose(mixture.emission[:, mixture.label_ids].sum(axis=1), 1)
    assert np.allclose(mixture.emission[:, mixture.input_ids].sum(axis=1), 1)
    assert np.all(mixture.emission[:, hmm.DELIMITER] == 0)
    assert len(set(mixture.start_states.tolist())) == mixture.n_tasks


def test_sampled_segments_follow_the_task_chain():
    mixture = tiny_mixture()
    rng = np.random.default_rng(0)
    task = 1
    x, y = hmm.sample_segments(mixture, np.full(40_000, task), 2, rng)
    start = np.eye(mixture.n_states)[mixture.start_states[task]]
    for pair in itertools.product(mixture.input_ids, repeat=2):
        operator = operator_kernel.input_operators(mixture, np.array([pair]))[0]
        for label in range(mixture.n_labels):
            exact = start @ operator @ mixture.transition @ mixture.emission[:, 1 + label]
            observed = np.mean((x[:, 0] == pair[0]) & (x[:, 1] == pair[1]) & (y == label))
            assert abs(observed - exact) < 0.01


# ------------------------------------------------------------------------------- forward algorithm


@pytest.mark.parametrize("x_length", [1, 2])
def test_forward_posterior_matches_brute_force_enumeration(x_length):
    mixture = tiny_mixture()
    prompts = hmm.sample_prompts(mixture, 2, 2, x_length, np.random.default_rng(5))
    for p in range(2):
        tokens = hmm.prompt_token_ids(prompts.x_demos[p], prompts.y_demos[p], prompts.x_test[p])
        expected = brute_force_label_posterior(mixture, tokens)
        assert np.allclose(forward.prompt_label_posterior(mixture, tokens), expected, rtol=1e-10)


def test_forward_log_likelihood_matches_brute_force():
    mixture = tiny_mixture()
    tokens = np.array([4, 5, 1, 0, 5, 2, 0, 4])
    alpha, log_weight = forward.start_forward(mixture, ())
    _, log_weight = forward.advance_forward(mixture, alpha, log_weight, tokens)
    expected = [np.log(mixture.task_prior[t] * brute_force_joint(mixture, t, tokens)) for t in range(2)]
    assert np.allclose(log_weight, expected)


def test_grid_posteriors_match_single_prompt_forward():
    mixture = tiny_mixture()
    prompts = hmm.sample_prompts(mixture, 4, 8, 2, np.random.default_rng(2))
    grid = [1, 3, 8]
    posterior, true_mass = forward.posteriors_over_n(mixture, prompts, grid)
    for p in range(4):
        for column, n in enumerate(grid):
            tokens = hmm.prompt_token_ids(prompts.x_demos[p, :n], prompts.y_demos[p, :n], prompts.x_test[p])
            assert np.allclose(posterior[p, column], forward.prompt_label_posterior(mixture, tokens))
    assert np.all((true_mass >= 0) & (true_mass <= 1))


def test_posterior_at_128_demos_sums_to_one_where_plain_probabilities_underflow():
    mixture = hmm.random_hmm_mixture(0, 8, 80, 100, 3, 1.0, 1.0)
    prompts = hmm.sample_prompts(mixture, 2, 128, 2, np.random.default_rng(1))
    tokens = np.stack(
        [hmm.prompt_token_ids(prompts.x_demos[p], prompts.y_demos[p], prompts.x_test[p]) for p in range(2)]
    )
    alpha, log_weight = forward.start_forward(mixture, (2,))
    _, log_weight = forward.advance_forward(mixture, alpha, log_weight, tokens)
    assert np.all(np.isfinite(log_weight))
    assert np.all(np.exp(log_weight) == 0.0)  # an unscaled forward pass would have lost everything
    posterior, _ = forward.posteriors_over_n(mixture, prompts, [128])
    assert np.all(np.isfinite(posterior)) and np.all(posterior >= 0)
    assert np.allclose(posterior.sum(axis=-1), 1.0)


# -------------------------------------------------------------------------------------- operators


def test_operator_product_gives_the_sequence_probability():
    mixture = tiny_mixture()
    for task in range(mixture.n_tasks):
        start = np.eye(mixture.n_states)[mixture.start_states[task]]
        total = 0.0
        for x in itertools.product(mixture.input_ids, repeat=3):
            via_operator = start @ operator_kernel.input_operators(mixture, np.array([x]))[0] @ np.ones(mixture.n_states)
            assert np.isclose(via_operator, brute_force_joint(mixture, task, np.array(x)))
            total += via_operator
        assert np.isclose(total, 1.0)  # the input slots form a distribution over inputs


def test_batched_operators_match_explicit_matrix_products():
    mixture = tiny_mixture(n_states=4)
    x = np.random.default_rng(0).choice(mixture.input_ids, size=(6, 4))
    batched = operator_kernel.input_operators(mixture, x)
    for row, tokens in enumerate(x):
        explicit = np.linalg.multi_dot([mixture.transition @ np.diag(mixture.emission[:, t]) for t in tokens])
        assert np.allclose(batched[row], explicit)
    assert np.allclose(operator_kernel.operator_features(mixture, x), batched.reshape(6, -1))


# ----------------------------------------------------------------------------------------- kernel


@pytest.mark.parametrize("n_samples,center", [(5, True), (40, True), (40, False)])
def test_kernel_is_symmetric_and_equals_the_explicit_inverse(n_samples, center):
    rng = np.random.default_rng(4)
    samples = rng.normal(size=(n_samples, 9)) + 3.0
    precision = operator_kernel.fit_ridge_precision(samples, relative_ridge=1e-2, center=center)
    assert precision.primal == (n_samples > 9)  # fewer samples than features: the Woodbury dual
    centred = samples - samples.mean(axis=0) if center else samples
    sigma = centred.T @ centred / n_samples
    explicit = np.linalg.inv(sigma + 1e-2 * np.trace(sigma) / 9 * np.eye(9))
    points = rng.normal(size=(7, 9))
    kernel = operator_kernel.kernel_matrix(precision, points, points)
    assert np.allclose(kernel, kernel.T)
    assert np.allclose(kernel, points @ explicit @ points.T)
    assert np.linalg.eigvalsh((kernel + kernel.T) / 2).min() > -1e-8 * np.abs(kernel).max()


def test_operator_kernel_is_symmetric_between_inputs():
    mixture = hmm.random_hmm_mixture(2, 4, 10, 20, 3, 1.0, 1.0)
    rng = np.random.default_rng(0)
    features = operator_kernel.operator_features(mixture, hmm.sample_pretraining_inputs(mixture, 300, 2, rng))
    precision = operator_kernel.fit_ridge_precision(features, 1e-3, center=True)
    x = operator_kernel.operator_features(mixture, hmm.sample_uniform_inputs(mixture, 12, 2, rng))
    kernel = operator_kernel.kernel_matrix(precision, x, x)
    assert np.allclose(kernel, kernel.T, rtol=1e-6, atol=1e-8 * np.abs(kernel).max())


def test_kernel_regression_prefixes_match_the_estimate_on_each_prefix():
    rng = np.random.default_rng(9)
    weights = rng.normal(size=(5, 11))  # negative weights included on purpose
    labels = rng.integers(0, 4, size=(5, 11))
    prefixes = operator_kernel.kernel_regression_prefixes(weights, labels, 4, [1, 4, 11])
    for column, n in enumerate([1, 4, 11]):
        assert np.allclose(prefixes[:, column], kernel_estimate(weights[:, :n], labels[:, :n], 4))


def test_uniform_second_moment_kernel_regression_tends_to_the_task_prediction():
    # Theorem 1's limit is exact when Sigma is the unweighted second moment of vec(T_x): check it
    # where few distinct inputs exist, so that many demonstrations reach the limit.
    mixture = tiny_mixture(n_inputs=2)
    rng = np.random.default_rng(11)
    every_input = np.array(list(itertools.product(mixture.input_ids, repeat=2)))
    precision = operator_kernel.fit_ridge_precision(operator_kernel.operator_features(mixture, every_input), 1e-9, center=False)
    task = 0
    x, y = hmm.sample_segments(mixture, np.full(50_000, task), 2, rng)
    x_test = every_input[1:2]
    weights = operator_kernel.kernel_matrix(precision, operator_kernel.operator_features(mixture, x_test), operator_kernel.operator_features(mixture, x))
    prediction = kernel_estimate(weights[0], y, mixture.n_labels)
    start = np.eye(mixture.n_states)[mixture.start_states[task]]
    joint = start @ operator_kernel.input_operators(mixture, x_test)[0] @ mixture.transition @ mixture.emission[:, mixture.label_ids]
    assert np.abs(prediction - joint / joint.sum()).sum() < 0.03


# ---------------------------------------------------------------------------------------- metrics


def test_distance_and_agreement():
    prediction = np.array([[0.2, 0.8], [1.5, -0.5], [np.nan, np.nan]])
    posterior = np.array([[0.5, 0.5001], [0.4, 0.6], [0.5, 0.5]])
    assert np.allclose(metrics.l1_distance(prediction, posterior)[:2], [0.5999, 2.2])
    assert metrics.l1_distance(prediction, posterior)[2] == np.inf
    assert metrics.argmax_agreement(prediction, posterior).tolist() == [1.0, 0.0, 0.0]


def test_hierarchical_bootstrap_interval():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(4, 50)) + np.array([[0.0], [1.0], [2.0], [3.0]])
    mean, low, high = study.bootstrap_mean_ci(values, 500, 0.95, 1)
    assert low < mean < high
    pooled = values - values.mean(axis=1, keepdims=True) + 1.5  # same spread within, none between
    _, flat_low, flat_high = study.bootstrap_mean_ci(pooled, 500, 0.95, 2)
    assert (flat_high - flat_low) < (high - low)  # spread between HMMs widens the interval
    assert study.bootstrap_mean_ci(np.full((3, 5), 0.25), 100, 0.9, 3) == (0.25, 0.25, 0.25)


# ------------------------------------------------------------------------------------ end to end


def small_params(**changes) -> dict:
    return dict(
        hmm_seeds=[0, 1], n_tasks=3, n_states=6, n_observations=12, n_labels=3, x_length=2,
        transition_concentration=1.0, emission_concentration=1.0, construction="shared", leakage=0.0,
        variants={}, n_demos=[1, 2, 4, 8], n_prompts=20, sigma_samples=100, ridge=1e-3,
        kernels=list(operator_kernel.THEOREM_KERNELS), bootstrap_resamples=50, ci_level=0.9, bootstrap_seed=0,
    ) | changes


def smk_for(params: dict, folder) -> SimpleNamespace:
    outputs = {name: folder / "theory" / file for name, file in
               [("table", "table.parquet"), ("figure", "convergence.png"), ("summary", "summary.md")]}
    return SimpleNamespace(params=SimpleNamespace(theory=params), output=SimpleNamespace(**outputs))


def test_from_snakemake_writes_table_figure_and_summary(tmp_path):
    smk = smk_for(small_params(), tmp_path)
    outputs = vars(smk.output)
    study.from_snakemake(smk)
    table = pl.read_parquet(outputs["table"])
    assert set(table["variant"]) == {"shared"}  # no variants: one, named after the construction
    assert set(table["kernel"]) == set(operator_kernel.THEOREM_KERNELS)
    pooled = table.filter(pl.col("hmm_seed").is_null())
    assert sorted(pooled["n_demos"].unique()) == [1, 2, 4, 8] and len(pooled) == 4 * len(operator_kernel.THEOREM_KERNELS)
    assert len(table) == 3 * len(pooled)
    assert (pooled["distance_ci_low"] <= pooled["distance_mean"] + 1e-12).all()
    assert (pooled["agreement_ci_high"] >= pooled["agreement_mean"] - 1e-12).all()
    assert pooled.filter(pl.col("n_demos") == 8)["paper_agreement"][0] == 0.901
    # With one demonstration every kernel predicts e(y_1), whatever its sign.
    at_one = pooled.filter(pl.col("n_demos") == 1)
    assert np.allclose(at_one["distance_mean"].to_numpy(), at_one["distance_mean"][0])
    assert outputs["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = outputs["summary"].read_text()
    assert "L1" in summary and "| 8 | 0.218 |" in summary


def test_same_params_give_identical_results():
    params = small_params()
    first, second = study.run_seed(params, 1), study.run_seed(params, 1)
    for kernel in operator_kernel.THEOREM_KERNELS:
        assert np.array_equal(first.distance[kernel], second.distance[kernel])


# ------------------------------------------------------------------------- constructions, variants


def block_mixture(seed: int = 4, leakage: float = 0.25, concentration: float = 1.0, **sizes) -> hmm.HmmMixture:
    sizes = dict(n_tasks=4, n_states=12, n_observations=9, n_labels=3) | sizes
    return hmm.random_hmm_mixture(seed, **sizes, transition_concentration=concentration,
                                 emission_concentration=concentration, construction="block", leakage=leakage)


@pytest.mark.parametrize("leakage", [0.0, 0.25])
def test_block_hmm_keeps_each_task_in_its_block_but_for_the_leakage(leakage):
    mixture = block_mixture(leakage=leakage)
    size = 3  # 12 states / 4 tasks, written out rather than taken from the code under test
    assert np.allclose(mixture.transition.sum(axis=1), 1)
    for state in range(12):
        inside = slice(size * (state // size), size * (state // size) + size)
        off_block = mixture.transition[state].sum() - mixture.transition[state, inside].sum()
        assert off_block == pytest.approx(leakage, abs=1e-12)
    if leakage == 0:
        blocks = [mixture.transition[size * t:size * (t + 1), size * t:size * (t + 1)] for t in range(4)]
        assert np.array_equal(mixture.transition, np.block([[b if i == j else np.zeros((3, 3)) for j, b in enumerate(blocks)]
                                                             for i in range(4)]))
    for task, start in enumerate(mixture.start_states):
        assert size * task <= start < size * (task + 1)


def test_block_hmm_without_leakage_never_leaves_the_block_when_sampled():
    mixture = block_mixture(leakage=0.0)
    x, _ = hmm.sample_segments(mixture, np.full(500, 2), 3, np.random.default_rng(0))
    # Inputs of task 2 can only come from states 6..8; tokens that only other blocks emit never appear.
    possible = mixture.emission[6:9].max(axis=0) > 0
    assert possible[x].all()


def test_forward_posterior_on_a_leaky_block_hmm_matches_brute_force():
    mixture = block_mixture(n_tasks=2, n_states=4, n_observations=6, n_labels=2, leakage=0.2)
    prompts = hmm.sample_prompts(mixture, 2, 2, 2, np.random.default_rng(3))
    for p in range(2):
        tokens = hmm.prompt_token_ids(prompts.x_demos[p], prompts.y_demos[p], prompts.x_test[p])
        assert np.allclose(forward.prompt_label_posterior(mixture, tokens), brute_force_label_posterior(mixture, tokens))


def test_shared_construction_draws_what_it_drew_before_constructions_existed():
    mixture = hmm.random_hmm_mixture(5, 4, 10, 20, 3, 0.5, 0.8)
    rng = np.random.default_rng(5)  # the original draw sequence, written out independently
    transition = rng.dirichlet(np.full(10, 0.5), size=10)
    labels, inputs = rng.dirichlet(np.full(3, 0.8), size=10), rng.dirichlet(np.full(16, 0.8), size=10)
    assert np.array_equal(mixture.transition, transition)
    assert np.array_equal(mixture.emission[:, 1:], np.concatenate([labels, inputs], axis=1))
    assert np.array_equal(mixture.start_states, rng.choice(10, size=4, replace=False))


def test_low_concentration_makes_sparse_rows():
    def effective_entries(rows: np.ndarray) -> float:
        """1 / sum p^2 per row, averaged: the number of entries a row really uses."""
        return float(np.mean(1.0 / (rows ** 2).sum(axis=1)))

    dense, sparse = (block_mixture(n_tasks=2, n_states=20, n_observations=40, leakage=0.0, concentration=c)
                     for c in (1.0, 0.03))
    # Blocks of 10 states and 35 input tokens: a flat Dirichlet uses about half of each row,
    # concentration 0.03 one or two entries.
    for rows in (lambda m: m.transition, lambda m: m.emission[:, m.input_ids]):
        assert effective_entries(rows(sparse)) < 3 < 4 < effective_entries(rows(dense))


def test_sparse_blocks_let_the_posterior_find_the_task():
    masses = {}
    for concentration in (1.0, 0.03):
        params = small_params(n_tasks=4, n_states=16, n_observations=30, construction="block", n_prompts=30,
                              transition_concentration=concentration, emission_concentration=concentration)
        masses[concentration] = study.run_seed(params, 0).true_task_mass[:, 0].mean()
    # One demonstration: sparse blocks emit tokens only their task emits, flat ones share them.
    assert masses[0.03] > 0.95 and masses[1.0] < 0.8


def test_bad_block_sizes_are_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match=r"config key 'theory.variants.b.construction': block needs "
                                          r"'theory.n_states' \(10\) divisible by 'theory.n_tasks' \(3\)"):
        theory_defaults({"n_tasks": 3, "n_states": 10, "variants": {"s": {}, "b": {"construction": "block"}}})
    with pytest.raises(ConfigError, match=r"config key 'theory.leakage': 0.1 applies only to construction: block"):
        theory_defaults({"leakage": 0.1, "variants": {}})
    theory_defaults({"n_tasks": 2, "n_states": 10, "variants": {"b": {"construction": "block", "leakage": 0.1}}})
    with pytest.raises(ValueError, match="n_states divisible by n_tasks"):
        hmm.random_hmm_mixture(0, 3, 10, 20, 3, 1.0, 1.0, construction="block")


def test_variants_take_the_section_and_override_their_own_keys():
    variants = theory_variants.variant_params(small_params(variants={"a": {}, "b": {"construction": "block", "kernels": ["constant"]}}))
    assert list(variants) == ["a", "b"]
    assert variants["a"]["construction"] == "shared" and variants["a"]["kernels"] == list(operator_kernel.THEOREM_KERNELS)
    assert variants["b"]["construction"] == "block" and variants["b"]["kernels"] == ["constant"]
    assert variants["b"]["n_prompts"] == 20 and "variants" not in variants["b"]
    with pytest.raises(ValueError, match="config key 'theory.variants'"):
        theory_variants.variant_params(small_params(variants={"a": {"n_prompts": 3}}))


def test_variant_table_has_every_variant_and_its_kernels(tmp_path):
    variants = {"shared": {}, "blocks": {"construction": "block", "leakage": 0.1, "kernels": ["pretraining_covariance", "constant"]}}
    smk = smk_for(small_params(variants=variants, n_demos=[1, 2, 32], hmm_seeds=[0]), tmp_path)
    study.from_snakemake(smk)
    table = pl.read_parquet(smk.output.table)
    assert table.columns[0] == "variant" and table.columns[1:] == tables.THEORY.names[1:]
    kernels = {variant: set(part["kernel"]) for (variant,), part in table.group_by("variant")}
    assert kernels == {"shared": set(operator_kernel.THEOREM_KERNELS), "blocks": {"pretraining_covariance", "constant"}}
    # The shared variant's numbers do not depend on the other variants being run beside it.
    alone = smk_for(small_params(n_demos=[1, 2, 32], hmm_seeds=[0]), tmp_path / "alone")
    study.from_snakemake(alone)
    alone_table = pl.read_parquet(alone.output.table)
    assert alone_table.equals(table.filter(pl.col("variant") == "shared"))
    summary = smk.output.summary.read_text()
    assert "### Every construction beside the paper's Table 3" in summary and "Closest to the paper's whole Table 3" in summary
    assert "| 32 | 0.085 |" in summary and "block HMM: 3 blocks of 2 states, leakage 0.1" in summary


def table3_rows(variant: str, kernel: str, offset: float) -> list[dict]:
    """Pooled rows that sit `offset` above the paper in distance and below it in agreement, plus a
    row at an n the paper does not have (it must not count)."""
    rows = [{"variant": variant, "kernel": kernel, "hmm_seed": None, "n_demos": n,
             "distance_mean": d + offset, "agreement_mean": a - offset, "paper_distance": d, "paper_agreement": a}
            for n, (d, a) in paper.TABLE3.items()]
    return rows + [dict(rows[0], n_demos=3, distance_mean=9.0, paper_distance=np.nan, paper_agreement=np.nan)]


def test_best_match_is_the_smallest_mean_absolute_difference_over_the_table():
    rows = table3_rows("far", "pretraining_covariance", 0.2) + table3_rows("near", "pretraining_covariance", 0.03)
    rows += table3_rows("near", "constant", 0.01) + table3_rows("only_constant", "constant", 0.0)
    near = [r for r in rows if r["variant"] == "near"]
    # Hand computation: 8 n x 2 metrics, each off by 0.03 -> mean 0.03; the n = 3 row is not a cell.
    assert verdicts.paper_differences(near, "pretraining_covariance").shape == (16,)
    assert verdicts.match_distance(near, "pretraining_covariance") == pytest.approx(0.03)
    assert verdicts.best_match(rows, ["far", "near", "only_constant"]) == ("near", pytest.approx(0.03))
    verdict = verdicts.match_verdict(rows, ["far", "near", "only_constant"])
    assert "**near**, mean |ours - paper| = 0.030 over its 16 cells" in verdict and "reproduces the paper's table" in verdict
    assert "constant kernel on the same construction is at 0.010 (as close or closer" in verdict
    assert "none of the constructions tried" in verdicts.match_verdict(rows, ["far"])
    assert verdicts.best_match(rows, ["only_constant"]) is None
    # near: 0.337 - 0.03 at n = 1 and 0.964 - 0.03 at n = 128; far: 0.137 and 0.764.
    assert verdicts.ends_sentence(rows, ["far", "near"]).endswith("reached by near; agreement >= 0.9 at the largest n by near; near reach both.")
    assert verdicts.ends_sentence(rows, ["far"]).endswith("by no variant; none reaches both ends of the table.")


def test_dropping_the_entries_no_input_reaches_leaves_every_kernel_value_unchanged():
    mixture = block_mixture(leakage=0.0)
    support = operator_kernel.feature_support(mixture, 2)
    block_mask = np.kron(np.eye(4), np.ones((3, 3))) > 0  # 4 tasks x 3 states, by hand
    assert np.array_equal(support, block_mask.ravel())
    assert operator_kernel.feature_support(block_mixture(leakage=0.25), 2).all()
    prompts = hmm.sample_prompts(mixture, 5, 6, 2, np.random.default_rng(1))
    params = small_params(x_length=2, sigma_samples=60)
    for kernel in ("pretraining_covariance", "uniform_second_moment"):
        full = operator_kernel.fit_kernel(mixture, kernel, params, 0)
        kept = operator_kernel.fit_kernel(mixture, kernel, params, 0, support)
        assert kept.samples.shape[1] == block_mask.sum() and kept.ridge == pytest.approx(full.ridge)
        assert kept.primal and not full.primal  # 36 kept features < 60 samples < 144 features
        reduced = operator_kernel.demo_kernel_weights(mixture, prompts, {kernel: kept}, support)[kernel]
        assert np.allclose(reduced, operator_kernel.demo_kernel_weights(mixture, prompts, {kernel: full})[kernel])


def test_default_variants_keep_their_order_and_start_with_the_shared_hmm():
    variants = theory_defaults({})["variants"]
    assert list(variants) == ["shared", "block", "block_sparse", "block_sparse_transitions"]  # not sorted by name
    assert variants["shared"] == {} and all(v["construction"] == "block" for k, v in variants.items() if k != "shared")
