"""The ablation analysis: the baseline's head read on every setting, and the summaries."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.analysis import ablation
from workflow_scripts.core import stats
from workflow_scripts.core.kernels import attention_weights, kernel_vote, normalized_entropy
from workflow_scripts.report import ablations as ablation_report

from .test_reconstruction import C, synthetic_set


def test_chosen_head_reads_the_baseline_choice():
    heldout = pd.DataFrame({"method": ["kr_encoder", "head_max"], "choice": ["enc", "L23 H2"]})
    assert ablation.chosen_head(heldout) == (23, 2)


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
        w = attention_weights(p["att"][1, 2], p["x_start"], p["y_pos"])["max"]
        assert r["head_prediction"] == kernel_vote(w, np.asarray(p["demo_labels"]), C)
        q = embeddings[t.example_id] / np.linalg.norm(embeddings[t.example_id])
        sims = [q @ embeddings[d] / np.linalg.norm(embeddings[d]) for d in t.demo_ids]
        assert r["demo_similarity"] == pytest.approx(np.mean(sims), rel=1e-5)
        assert r["entropy"] == pytest.approx(normalized_entropy(w.astype(np.float32)), rel=1e-3)


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
    out = pd.DataFrame(ablation.ablation_summary(data, "order", "random", 300, 0))
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
    shift = out[(out.setting == "order_1") & (out.metric == "icl_accuracy_shift")].iloc[0]
    other = data[data.setting == "order_1"]
    paired = (other.icl_prediction == other.label).groupby(other.example_id).mean() - per_prompt
    assert shift["mean"] == pytest.approx(paired.mean())
    assert (shift.ci_low, shift.ci_high) == pytest.approx(stats.bootstrap_ci(paired.to_numpy(dtype=float), 300, 0))
    assert set(out.metric) == set(ablation.METRICS) | {"icl_changed", "head_changed"} | {
        f"{m}_shift" for m in ("icl_accuracy", "agreement", "entropy")}
    assert not ((out.setting == "random") & out.metric.str.endswith("_shift")).any()
    assert ablation_report.sample(out, "random").startswith("Sample: t: 30 held-out inputs x 2 seeds (")


def test_a_paired_difference_finds_what_separate_intervals_miss():
    # 30 inputs; the setting flips 6 wrong answers to right and nothing else: separate 95% intervals
    # overlap, the paired one does not, and the conclusion says so. A k ablation also compares its
    # largest and smallest k directly.
    rows = []
    for setting, k in (("random", 8), ("k2", 2), ("k16", 16)):
        for e in range(30):
            icl = int(e < 15 or (setting == "k16" and e < 21))
            rows.append(("t", 0, setting, f"e{e}", 1, icl, icl if setting != "k2" else 0, 0.5, 0.1, k))
    out = pd.DataFrame(ablation.ablation_summary(frame(rows), "k", "random", 1000, 0))
    acc = out[out.metric == "icl_accuracy"].set_index("setting")
    assert acc.loc["k16", "ci_low"] < acc.loc["random", "ci_high"]
    shift = out[(out.setting == "k16") & (out.metric == "icl_accuracy_shift")].iloc[0]
    assert shift["mean"] == pytest.approx(0.2) and shift.ci_low > 0
    gain = out[(out.setting == "k16 vs k2") & (out.metric == "agreement_shift")].iloc[0]
    assert gain["mean"] == pytest.approx(1.0 - 0.5)
    assert ablation_report.conclusion("k", out, "random").startswith("Held: head agreement with ICL rises")
    assert ablation_report.conclusion("retrieval", out.replace({"k16": "similar"}), "random") == (
        "Partly held: similar demonstrations raised ICL accuracy (t/similar) but did not narrow the head's kernel, "
        "by paired 95% CIs.")
