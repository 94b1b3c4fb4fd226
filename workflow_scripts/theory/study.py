"""Synthetic check of Theorem 1 (paper Appendix C, Table 3): on a random HMM mixture, does kernel
regression with K(x, x') = vec(T_x)^T Sigma^{-1} vec(T_x') approach the exact Bayesian posterior
P(y_test | prompt) as the number of demonstrations n grows?

The modules of the check: hmm.py builds the random HMM mixtures and samples prompts from them;
forward.py gives the exact Bayesian posterior; operator_kernel.py the operator kernel, the other
kernels and kernel regression; metrics.py the distance and agreement of Table 3; variants.py the
constructions run side by side; verdicts.py and figure.py the summary and the figure. This module
runs them: one variant's HMM seeds (run_study), its table rows with bootstrap intervals
(table3_rows), all variants (run_variants), and the Snakemake entry point (from_snakemake).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workflow_scripts.core import paper, stats, table_io, tables
from workflow_scripts.theory.figure import plot_convergence
from workflow_scripts.theory.forward import posteriors_over_n
from workflow_scripts.theory.hmm import random_hmm_mixture, random_stream, sample_prompts
from workflow_scripts.theory.metrics import DISTANCE_NAME, argmax_agreement, l1_distance
from workflow_scripts.theory.operator_kernel import demo_kernel_weights, feature_support, fit_kernel, kernel_regression_prefixes
from workflow_scripts.theory.variants import variant_params
from workflow_scripts.theory.verdicts import summary_markdown

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- one variant


@dataclass(frozen=True)
class SeedResult:
    """Per-prompt measurements for one random HMM: arrays indexed (prompt, n on the grid)."""

    hmm_seed: int
    distance: dict[str, np.ndarray]
    agreement: dict[str, np.ndarray]
    negative_weights: dict[str, np.ndarray]  # fraction of the first n kernel weights below 0
    negative_denominator: dict[str, np.ndarray]  # 1.0 where sum of the first n weights < 0
    true_task_mass: np.ndarray


def run_seed(params: dict[str, Any], hmm_seed: int) -> SeedResult:
    """Everything for one random HMM: prompts, exact posteriors, each kernel's predictions, metrics."""
    n_grid = sorted(params["n_demos"])
    mixture = random_hmm_mixture(
        hmm_seed,
        params["n_tasks"],
        params["n_states"],
        params["n_observations"],
        params["n_labels"],
        params["transition_concentration"],
        params["emission_concentration"],
        params["construction"],
        params["leakage"],
    )
    prompts = sample_prompts(mixture, params["n_prompts"], n_grid[-1], params["x_length"], random_stream(hmm_seed, "prompts"))
    posterior, true_task_mass = posteriors_over_n(mixture, prompts, n_grid)
    result = SeedResult(hmm_seed, {}, {}, {}, {}, true_task_mass)
    support = feature_support(mixture, params["x_length"])
    precisions = {kernel: fit_kernel(mixture, kernel, params, hmm_seed, support) for kernel in params["kernels"]}
    rows = np.asarray(n_grid) - 1
    for kernel, weights in demo_kernel_weights(mixture, prompts, precisions, support).items():
        prediction = kernel_regression_prefixes(weights, prompts.y_demos, mixture.n_labels, n_grid)
        result.distance[kernel] = l1_distance(prediction, posterior)
        result.agreement[kernel] = argmax_agreement(prediction, posterior)
        result.negative_weights[kernel] = np.cumsum(weights < 0, axis=1)[:, rows] / np.asarray(n_grid)
        result.negative_denominator[kernel] = (np.cumsum(weights, axis=1)[:, rows] < 0).astype(float)
    return result


def run_study(params: dict[str, Any]) -> list[SeedResult]:
    """All HMM seeds, logging progress."""
    results = []
    for hmm_seed in params["hmm_seeds"]:
        started = time.perf_counter()
        results.append(run_seed(params, hmm_seed))
        log.info("theory: HMM seed %d done in %.1f s", hmm_seed, time.perf_counter() - started)
    return results


def bootstrap_mean_ci(
    values: np.ndarray, n_resamples: int, level: float, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Mean and percentile CI of (HMMs, prompts) values: core/stats.py's two-stage bootstrap,
    resampling the HMMs and then each drawn HMM's own prompts.

    Resampling the HMMs too makes the interval cover the variation between random HMMs, not only
    between prompts of the HMMs we happened to draw. Each HMM has prompts of its own (prompt i of
    one HMM has nothing to do with prompt i of another), hence the ragged version, which resamples
    every HMM's prompts separately.
    """
    with np.errstate(invalid="ignore"):  # infinite distances (sum K = 0) give inf - inf in the quantile
        low, high = stats.ragged_hierarchical_bootstrap_ci(list(values), n_resamples, rng, level)
    return float(values.mean()), low, high


def table3_rows(results: list[SeedResult], params: dict[str, Any], variant: str) -> list[dict[str, Any]]:
    """Table rows of one variant: per kernel and n, one aggregate row (hmm_seed None) then one per HMM seed.

    Every variant restarts the bootstrap stream, so a variant's numbers do not depend on the others.
    """
    n_grid = sorted(params["n_demos"])
    rng = np.random.default_rng([params["bootstrap_seed"], 0])
    rows = []
    for kernel in params["kernels"]:
        for column, n in enumerate(n_grid):
            scopes = [(None, results)] + [(r.hmm_seed, [r]) for r in results]
            for hmm_seed, chosen in scopes:
                distance = np.stack([r.distance[kernel][:, column] for r in chosen])
                agreement = np.stack([r.agreement[kernel][:, column] for r in chosen])
                d_mean, d_low, d_high = bootstrap_mean_ci(
                    distance, params["bootstrap_resamples"], params["ci_level"], rng
                )
                a_mean, a_low, a_high = bootstrap_mean_ci(
                    agreement, params["bootstrap_resamples"], params["ci_level"], rng
                )
                paper_cell = paper.TABLE3.get(n, (float("nan"), float("nan")))
                rows.append(
                    {
                        "variant": variant,
                        "kernel": kernel,
                        "n_demos": int(n),
                        "hmm_seed": hmm_seed,
                        "n_prompts": int(distance.size),
                        "distance_metric": DISTANCE_NAME,
                        "distance_mean": d_mean,
                        "distance_ci_low": d_low,
                        "distance_ci_high": d_high,
                        "distance_median": float(np.median(distance)),
                        "agreement_mean": a_mean,
                        "agreement_ci_low": a_low,
                        "agreement_ci_high": a_high,
                        "negative_weight_fraction": float(
                            np.mean([r.negative_weights[kernel][:, column] for r in chosen])
                        ),
                        "negative_denominator_fraction": float(
                            np.mean([r.negative_denominator[kernel][:, column] for r in chosen])
                        ),
                        "true_task_posterior_mean": float(np.mean([r.true_task_mass[:, column] for r in chosen])),
                        "paper_distance": paper_cell[0],
                        "paper_agreement": paper_cell[1],
                    }
                )
    return rows


# -------------------------------------------------------------------- all variants and the outputs


def write_table(rows: list[dict[str, Any]], path: str | Path) -> None:
    """The THEORY table; hmm_seed is null on the rows pooled over seeds."""
    table_io.write_table({name: [row[name] for row in rows] for name in tables.THEORY.names}, tables.THEORY, path)


def run_variants(params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every variant's study, summarised into one list of table rows."""
    rows = []
    for name, variant in variant_params(params).items():
        started = time.perf_counter()
        rows += table3_rows(run_study(variant), variant, name)
        log.info("theory: variant %s done in %.1f s", name, time.perf_counter() - started)
    return rows


def from_snakemake(smk) -> None:
    """Snakemake entry point: config section `theory` in, table/figure/summary out."""
    params = dict(smk.params.theory)
    started = time.perf_counter()
    rows = run_variants(params)
    for output in (smk.output.table, smk.output.figure, smk.output.summary):
        Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_table(rows, smk.output.table)
    plot_convergence(rows, params, smk.output.figure)
    Path(smk.output.summary).write_text(summary_markdown(rows, params))
    log.info("theory: done in %.1f s", time.perf_counter() - started)
