"""Section 5.3: per-head Pearson correlation of kernel weights with prediction similarity."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workflow_scripts import similarity as sim
from workflow_scripts.kernels import ATTENTION_KERNELS

from .test_reconstruction import C, H, L, loop_weights, synthetic_set


def zero_shot_probs(prompts, seed: int = 0) -> pd.DataFrame:
    """A random zero-shot distribution for every query and demonstration id of the prompts."""
    rng = np.random.default_rng(seed)
    ids = sorted(set(prompts.column("example_id").to_pylist()) | {d for row in prompts.column("demo_ids").to_pylist() for d in row})
    return pd.DataFrame({"probs": list(rng.dirichlet(np.ones(C), size=len(ids)))}, index=pd.Index(ids, name="example_id"))


def test_prediction_similarity_is_a_dot_product_per_demo():
    query = np.array([0.7, 0.2, 0.1])
    demos = np.array([[1.0, 0, 0], [0, 0.5, 0.5], [0.2, 0.3, 0.5]])
    np.testing.assert_allclose(sim.prediction_similarity(query, demos), [0.7, 0.15, 0.25])


def test_head_correlations_against_corrcoef_over_all_pairs():
    prompts, shards, truth = synthetic_set(n_prompts=10, seed=2)
    probs = zero_shot_probs(prompts)
    got = pd.DataFrame(sim.head_correlations(prompts, shards, probs.probs))
    assert len(got) == L * H * len(ATTENTION_KERNELS)
    rows = prompts.to_pylist()
    for kernel in ATTENTION_KERNELS:
        weights, sims = [], []
        for p, row in zip(truth, rows):
            weights.append(loop_weights(p["att"], p["x_start"], p["y_pos"])[kernel])  # (L, H, k)
            query = probs.loc[row["example_id"], "probs"]
            sims.append([float(np.dot(query, probs.loc[d, "probs"])) for d in row["demo_ids"]])
        weights = np.concatenate(weights, axis=-1)
        sims = np.concatenate(sims)
        for layer in range(L):
            for head in range(H):
                expected = np.corrcoef(weights[layer, head], sims)[0, 1]
                cell = got[(got.kernel == kernel) & (got.layer == layer) & (got["head"] == head)]
                assert cell.pearson.iloc[0] == pytest.approx(expected, abs=1e-6)  # attention is read as float32
                assert cell.n_pairs.iloc[0] == len(sims)


def test_a_missing_zero_shot_row_names_the_table():
    prompts, shards, _ = synthetic_set(n_prompts=3)
    probs = zero_shot_probs(prompts).drop(index="t-d1-2")
    with pytest.raises(ValueError, match=r"zs\.parquet: no row for examples \['t-d1-2'\]"):
        sim.head_correlations(prompts, shards, probs.probs, "zs.parquet")
