"""The ablation analysis: the baseline's head read on every setting, and the summaries."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workflow_scripts import ablation, stats
from workflow_scripts.reconstruction import kernel_weights, reconstruct

from .test_reconstruction import C, synthetic_set


def test_chosen_head_reads_the_baseline_choice():
    heldout = pd.DataFrame({"method": ["kr_encoder", "head_max"], "choice": ["enc", "L23 H2"]})
    assert ablation.chosen_head(heldout) == (23, 2)


def test_normalized_entropy():
    assert ablation.normalized_entropy(np.ones(8)) == pytest.approx(1.0)
    assert ablation.normalized_entropy(np.array([1.0, 0, 0, 0])) == pytest.approx(0.0)
    w = np.array([0.5, 0.25, 0.25])
    assert ablation.normalized_entropy(w * 3) == pytest.approx(-(w * np.log(w)).sum() / np.log(3))


def test_prompt_rows_against_a_direct_computation():
    prompts, shards, truth = synthetic_set(n_prompts=8, seed=1)
    rng = np.random.default_rng(0)
    table = prompts.to_pandas()
    ids = set(table.example_id) | {d for row in table.demo_ids for d in row}
    embeddings = {i: rng.normal(size=3) for i in ids}
    keep = {1, 3, 4}
    rows = ablation.prompt_rows(prompts, shards, (1, 2), keep, embeddings, C)
    assert sorted(r["prompt_id"] for r in rows) == [1, 3, 4]
    for r in rows:
        p, t = truth[r["prompt_id"]], table.iloc[r["prompt_id"]]
        w = kernel_weights(p["att"][1, 2], p["x_start"], p["y_pos"])["max"]
        assert r["head_prediction"] == reconstruct(w, np.asarray(p["demo_labels"]), C)
        q = embeddings[t.example_id] / np.linalg.norm(embeddings[t.example_id])
        sims = [q @ embeddings[d] / np.linalg.norm(embeddings[d]) for d in t.demo_ids]
        assert r["demo_similarity"] == pytest.approx(np.mean(sims), rel=1e-5)
        assert r["entropy"] == pytest.approx(ablation.normalized_entropy(w.astype(np.float32)), rel=1e-3)


def frame(kind_rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(kind_rows, columns=["task", "seed", "setting", "example_id", "label", "icl_prediction", "head_prediction",
                                            "entropy", "demo_similarity", "n_demos"])


def test_summarize_means_and_intervals():
    rng = np.random.default_rng(0)
    rows = []
    for seed in (0, 1):
        for setting in ("random", "order_1"):
            for e in range(30):
                label = e % 2
                rows.append(("t", seed, setting, f"e{e}", label, int(rng.integers(2)), int(rng.integers(2)), rng.random(), rng.random(), 8))
    data = frame(rows)
    out = pd.DataFrame(ablation.summarize(data, "order", 300, 0))
    got = out[(out.setting == "random") & (out.metric == "icl_accuracy")].iloc[0]
    part = data[data.setting == "random"]
    per_prompt = (part.icl_prediction == part.label).groupby(part.example_id).mean()
    assert got["mean"] == pytest.approx(per_prompt.mean())
    assert (got.ci_low, got.ci_high) == pytest.approx(stats.bootstrap_ci(per_prompt.to_numpy(dtype=float), 300, 0))
    assert got.n_prompts == 30 and got.n_seeds == 2
    changed = out[(out.setting == "any order") & (out.metric == "icl_changed")].iloc[0]
    pivot = data.pivot_table(index=["seed", "example_id"], columns="setting", values="icl_prediction")
    expected = (pivot["random"] != pivot["order_1"]).groupby("example_id").mean().mean()
    assert changed["mean"] == pytest.approx(expected)
    assert set(out.metric) == set(ablation.METRICS) | {"icl_changed", "head_changed"}
