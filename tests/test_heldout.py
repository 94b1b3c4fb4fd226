"""Section 5.5: kernel-regression baselines and Table 2 over seeds."""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from workflow_scripts.analysis import heldout, table2
from workflow_scripts.analysis import reconstruction as rc
from workflow_scripts.core import stats, tables
from workflow_scripts.core.readers import prediction_grid
from workflow_scripts.core.split import select_heldout

from .test_reconstruction import C, synthetic_set


def set_with_baselines(seed: int = 0):
    """Synthetic prompts and reconstructions plus random embeddings and 3-layer hidden states."""
    prompts, shards, _ = synthetic_set(n_prompts=30, seed=seed)
    recon = pa.Table.from_pydict(rc.head_predictions(prompts, shards, C), schema=tables.RECONSTRUCTION)
    rng = np.random.default_rng(seed)
    frame = pl.from_arrow(prompts)
    ids = set(frame["example_id"]) | {d for row in frame["demo_ids"].to_list() for d in row}
    embeddings = {i: rng.normal(size=5) for i in sorted(ids)}
    hidden = {i: rng.normal(size=(3, 4)) for i in sorted(ids)}
    return frame, recon, embeddings, hidden


def test_heldout_rows_choose_on_select_and_report_only_heldout():
    frame, recon, embeddings, hidden = set_with_baselines()
    cols = pl.DataFrame(heldout.heldout_rows(frame, recon, embeddings, hidden, "enc", C, 18, 12, seed=5))
    select, held = select_heldout(frame.sort("prompt_id")["label"].to_numpy(), 18, 12, seed=5)
    assert set(cols["method"]) == {"head_max", "head_label", "head_mean", "head_max_nosink", "kr_encoder", "kr_hidden",
                                "recency", "uniform", "positional", "slot_label"}
    assert sorted(set(cols["prompt_id"])) == sorted(frame["prompt_id"].to_numpy()[held])
    _, _, icl, grid = prediction_grid(recon, "max")
    scores = (grid[select] == icl[select, None, None]).mean(axis=0)
    layer, head = np.unravel_index(np.argmax(scores), scores.shape)
    head_rows = cols.filter(pl.col("method") == "head_max").sort("prompt_id")
    assert head_rows["choice"][0] == f"L{layer} H{head}" and head_rows["select_agreement"][0] == pytest.approx(scores.max())
    np.testing.assert_array_equal(head_rows["prediction"].to_numpy(), grid[held, layer, head])
    # the special head of the synthetic set follows the ICL prediction exactly, so it must be the one chosen
    assert head_rows["choice"][0] == "L1 H2" and (head_rows["prediction"] == head_rows["icl_prediction"]).all()
    assert (cols["null_prediction"] == np.bincount(icl[select], minlength=C).argmax()).all()
    # encoder baseline against a direct computation on the held-out prompts
    enc = dict(cols.filter(pl.col("method") == "kr_encoder").select("prompt_id", "prediction").iter_rows())
    for row in frame.iter_rows(named=True):
        if row["prompt_id"] in enc:
            q = embeddings[row["example_id"]] / np.linalg.norm(embeddings[row["example_id"]])
            s = np.array([q @ embeddings[d] / np.linalg.norm(embeddings[d]) for d in row["demo_ids"]])
            y_hat = (s[:, None] * np.eye(C)[list(row["demo_labels"])]).sum(axis=0) / s.sum()
            assert enc[row["prompt_id"]] == np.argmax(y_hat)
    # hidden-state baseline: the chosen layer is the best on the select split
    layer = int(cols.filter(pl.col("method") == "kr_hidden")["choice"][0].split()[-1])
    agree = []
    for candidate in range(3):
        pred = heldout.cosine_votes({i: v[candidate] for i, v in hidden.items()}, frame, C)
        agree.append(np.mean(pred[select] == icl[select]))
    assert layer == int(np.argmax(agree))


def test_table2_against_a_direct_computation():
    rng = np.random.default_rng(0)
    frames, agree = [], {}
    for seed in (0, 1, 2):
        n = 40
        label = rng.integers(0, 2, n)
        icl = np.where(rng.random(n) < 0.7, label, 1 - label)
        for method in ("head_max", "kr_encoder"):
            pred = np.where(rng.random(n) < 0.8, icl, 1 - icl)
            agree[(method, seed)] = pred == icl
            frames.append(pl.DataFrame({
                "prompt_id": np.arange(n), "example_id": [f"e{i}" for i in range(n)], "method": method,
                "choice": f"c{seed}", "select_agreement": 0.5, "label": label, "icl_prediction": icl,
                "null_prediction": 1, "prediction": pred, "seed": seed,
            }))
        agree[("icl", seed)], agree[("null", seed)] = icl == label, icl == 1
    frame = pl.concat(frames)
    table = by_key(table2.table2_columns(frame, n_resamples=500, seed=0))
    assert set(table) == {("icl", "accuracy"), ("null", "agreement"), ("null", "accuracy"),
                          ("head_max", "agreement"), ("head_max", "accuracy"),
                          ("kr_encoder", "agreement"), ("kr_encoder", "accuracy")}
    per_seed = np.array([agree[("head_max", s)].mean() for s in (0, 1, 2)])
    got = table[("head_max", "agreement")]
    assert got["mean"] == pytest.approx(per_seed.mean()) and got["sd"] == pytest.approx(per_seed.std(ddof=1))
    per_example = np.mean([agree[("head_max", s)] for s in (0, 1, 2)], axis=0)  # examples e0..e39, in id order below
    order = np.argsort([f"e{i}" for i in range(40)])
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(stats.bootstrap_ci(per_example[order], 500, 0))
    assert got["ci_low"] < got["mean"] < got["ci_high"]
    assert got["seeds_ci_low"] <= got["mean"] <= got["seeds_ci_high"]
    assert got["choices"] == "seed 0: c0; seed 1: c1; seed 2: c2"
    rows = frame.filter(pl.col("method") == "head_max")
    assert table2.describe_choices(rows.with_columns(choice=pl.lit("same"))) == "same (every seed)"
    assert table[("icl", "accuracy")]["mean"] == pytest.approx(np.mean([agree[("icl", s)] for s in (0, 1, 2)]))
    assert table[("null", "agreement")]["mean"] == pytest.approx(np.mean([agree[("null", s)] for s in (0, 1, 2)]))
    assert all(r["n_seeds"] == 3 and r["n_heldout"] == 40 for r in table.values())


def by_key(columns: dict[str, list]) -> dict[tuple[str, str], dict]:
    """Table 2's rows by (method, metric)."""
    return {(r["method"], r["metric"]): r for r in pl.DataFrame(columns).iter_rows(named=True)}


def test_the_hierarchical_interval_counts_the_variation_between_seeds():
    rng = np.random.default_rng(1)
    same = rng.random((60, 1)).repeat(2, axis=1) > 0.5  # two seeds that agree on every example
    flat = stats.bootstrap_ci(same.mean(axis=1), 2000, 0)
    hier = stats.hierarchical_bootstrap_ci(same, 2000, 0)
    assert hier == pytest.approx(flat, abs=0.03)  # nothing between seeds to add
    apart = np.column_stack([np.zeros(60), np.ones(60)])  # seed 0 always wrong, seed 1 always right
    assert stats.bootstrap_ci(apart.mean(axis=1), 2000, 0) == (0.5, 0.5)  # averaging hides the seeds
    low, high = stats.hierarchical_bootstrap_ci(apart, 2000, 0)
    assert low == 0.0 and high == 1.0  # a resample of two seeds may draw either one twice
    one = stats.hierarchical_bootstrap_ci(same[:, :1], 2000, 0)
    assert one == pytest.approx(flat, abs=0.03)


def _unused_seeds_that_held_out_different_examples():
    frame = pl.DataFrame({
        "prompt_id": [0, 0], "example_id": ["a", "b"], "method": "head_max", "choice": "c", "select_agreement": 1.0,
        "label": 0, "icl_prediction": 0, "null_prediction": 0, "prediction": 0, "seed": [0, 1],
    })
    with pytest.raises(ValueError, match="split_seed"):
        table2.table2_columns(frame, 100, 0)


def test_the_calibrated_prediction_is_one_more_method_scored_on_the_same_split():
    frame, recon, embeddings, hidden = set_with_baselines()
    n = frame.height
    select, held = select_heldout(frame.sort("prompt_id")["label"].to_numpy(), 18, 12, seed=5)
    ids = frame.sort("prompt_id")["prompt_id"].to_numpy()
    calibrated = np.full(n, -1)
    calibrated[held] = np.random.default_rng(3).integers(0, C, len(held))
    # calibrated on the held-out prompts only
    by_prompt = dict(zip(ids[held].tolist(), calibrated[held].tolist()))
    cols = pl.DataFrame(heldout.heldout_rows(frame, recon, embeddings, hidden, "enc", C, 18, 12, seed=5, calibrated=("cf", by_prompt)))
    rows = cols.filter(pl.col("method") == "icl_calibrated").sort("prompt_id")
    assert rows["choice"][0] == "cf" and np.isnan(rows["select_agreement"][0])
    np.testing.assert_array_equal(rows["prediction"].to_numpy(), calibrated[np.sort(held)])
    without_first = dict(list(by_prompt.items())[1:])
    with pytest.raises(heldout.HeldoutError, match="re-run calibrate"):
        heldout.heldout_rows(frame, recon, embeddings, hidden, "enc", C, 18, 12, seed=5, calibrated=("cf", without_first))
