"""The ablation analysis: the baseline's head read on every setting, and the summaries."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from workflow_scripts.analysis import ablation
from workflow_scripts.core import aggregate, stats
from workflow_scripts.core.kernels import attention_weights, kernel_vote, normalized_entropy
from workflow_scripts.report import ablations as ablation_report

from .test_reconstruction import C, synthetic_set


def test_chosen_head_reads_the_baseline_choice():
    heldout = pl.DataFrame({"method": ["kr_encoder", "head_max"], "choice": ["enc", "L23 H2"]})
    assert ablation.chosen_head(heldout) == (23, 2)


def test_prompt_rows_against_a_direct_computation():
    prompts, shards, truth = synthetic_set(n_prompts=8, seed=1)
    rng = np.random.default_rng(0)
    table = prompts.to_pylist()
    ids = {r["example_id"] for r in table} | {d for r in table for d in r["demo_ids"]}
    embeddings = {i: rng.normal(size=3) for i in ids}
    keep = {1, 3, 4}
    rows = ablation.prompt_rows(prompts, shards, (1, 2), keep, embeddings, C)
    assert sorted(r["prompt_id"] for r in rows) == [1, 3, 4]
    for r in rows:
        p, t = truth[r["prompt_id"]], table[r["prompt_id"]]
        w = attention_weights(p["att"][1, 2], p["x_start"], p["y_pos"])["max"]
        assert r["head_prediction"] == kernel_vote(w, np.asarray(p["demo_labels"]), C)
        q = embeddings[t["example_id"]] / np.linalg.norm(embeddings[t["example_id"]])
        sims = [q @ embeddings[d] / np.linalg.norm(embeddings[d]) for d in t["demo_ids"]]
        assert r["demo_similarity"] == pytest.approx(np.mean(sims), rel=1e-5)
        assert r["entropy"] == pytest.approx(normalized_entropy(w.astype(np.float32)), rel=1e-3)


COLUMNS = ["task", "seed", "setting", "example_id", "label", "icl_prediction", "head_prediction", "entropy",
           "demo_similarity", "n_demos"]


def frame(kind_rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(kind_rows, schema=COLUMNS, orient="row")


def summary_row(out: pl.DataFrame, setting: str, metric: str) -> dict:
    return out.filter((pl.col("setting") == setting) & (pl.col("metric") == metric)).row(0, named=True)


def per_prompt(rows: list[tuple], setting: str, value) -> np.ndarray:
    """Per example id (sorted), the mean over seeds of value(row) of one setting's rows."""
    named = [dict(zip(COLUMNS, r)) for r in rows if r[2] == setting]
    examples = sorted({r["example_id"] for r in named})
    return np.array([np.mean([value(r) for r in named if r["example_id"] == e]) for e in examples])


def test_summarize_means_and_intervals():
    rng = np.random.default_rng(0)
    rows = []
    for seed in (0, 1):
        for setting in ("random", "order_1"):
            for e in range(30):
                label = e % 2
                rows.append(("t", seed, setting, f"e{e}", label, int(rng.integers(2)), int(rng.integers(2)), rng.random(), rng.random(), 8))
    out = pl.DataFrame(ablation.ablation_summary(frame(rows), "order", "random", 300, 0))
    got = summary_row(out, "random", "icl_accuracy")
    correct = per_prompt(rows, "random", lambda r: r["icl_prediction"] == r["label"])
    assert got["mean"] == pytest.approx(correct.mean())
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(stats.bootstrap_ci(correct, 300, 0))
    assert got["n_prompts"] == 30 and got["n_seeds"] == 2
    changed = summary_row(out, "any order", "icl_changed")
    prediction = {(r[1], r[2], r[3]): r[5] for r in rows}  # (seed, setting, example) -> ICL prediction
    expected = np.mean([np.mean([prediction[(s, "random", f"e{e}")] != prediction[(s, "order_1", f"e{e}")] for s in (0, 1)])
                        for e in range(30)])
    assert changed["mean"] == pytest.approx(expected)
    shift = summary_row(out, "order_1", "icl_accuracy_shift")
    paired = per_prompt(rows, "order_1", lambda r: r["icl_prediction"] == r["label"]) - correct
    assert shift["mean"] == pytest.approx(paired.mean())
    assert (shift["ci_low"], shift["ci_high"]) == pytest.approx(stats.bootstrap_ci(paired, 300, 0))
    assert set(out["metric"]) == set(ablation.METRICS) | {"icl_changed", "head_changed"} | {
        f"{m}_shift" for m in ("icl_accuracy", "agreement", "entropy")}
    assert out.filter((pl.col("setting") == "random") & pl.col("metric").str.ends_with("_shift")).is_empty()
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
    out = pl.DataFrame(ablation.ablation_summary(frame(rows), "k", "random", 1000, 0))
    assert summary_row(out, "k16", "icl_accuracy")["ci_low"] < summary_row(out, "random", "icl_accuracy")["ci_high"]
    shift = summary_row(out, "k16", "icl_accuracy_shift")
    assert shift["mean"] == pytest.approx(0.2) and shift["ci_low"] > 0
    gain = summary_row(out, "k16 vs k2", "agreement_shift")
    assert gain["mean"] == pytest.approx(1.0 - 0.5)
    assert ablation_report.conclusion("k", out, "random").startswith("Held: head agreement with ICL rises")
    similar = out.with_columns(pl.col("setting").replace({"k16": "similar"}))
    assert ablation_report.conclusion("retrieval", similar, "random") == (
        "Partly held: similar demonstrations raised ICL accuracy (t/similar) but did not narrow the head's kernel, "
        "by paired 95% CIs.")


def test_means_over_seeds_are_summed_as_the_pandas_summaries_were():
    # Summed in order 1 + 1e100 + 1 - 1e100 with Kahan's compensation the ones are lost (0); numpy's
    # reduceat keeps one of them. pandas took reduceat where the rows came sorted by example and held no
    # NaN, Kahan otherwise: the summaries keep doing so, so reruns give the same bytes.
    values = np.array([1.0, 1e100, 1.0, -1e100])
    zeros = np.zeros(4)
    sorted_rows = pl.DataFrame({"example_id": ["a"] * 4, "entropy": values, "demo_similarity": zeros})
    assert ablation.per_example(sorted_rows, ["entropy"])["entropy"].to_list() == [np.add.reduceat(values, [0])[0] / 4]
    with_nan = sorted_rows.with_columns(demo_similarity=pl.Series([0.0, float("nan"), 0.0, 0.0]))
    # a NaN in a float column averaged beside it (one block of floats in pandas)
    assert ablation.per_example(with_nan, ["entropy", "demo_similarity"])["entropy"].to_list() == [0.0]
    interleaved = pl.DataFrame({"example_id": ["a", "b"] * 4, "entropy": np.repeat(values, 2), "demo_similarity": np.zeros(8)})
    assert ablation.per_example(interleaved, ["entropy"])["entropy"].to_list() == [0.0, 0.0]
    assert aggregate.mean(pl.Series([0.5, float("nan"), 1.0])) == 0.75  # NaN left out
