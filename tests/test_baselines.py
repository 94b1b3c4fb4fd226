"""Query-free readings (baselines.py) against hand computations, and the verdict they support: a planted
positional head is not a kernel, a planted query-dependent head is."""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from workflow_scripts.analysis import baselines, heldout, table2, table2_rows
from workflow_scripts.core import stats, tables
from workflow_scripts.report import assemble
from workflow_scripts.report import table2 as table2_report


def test_recency_and_the_uniform_kernel_with_each_tie_rule():
    labels = np.array([[0, 1, 1, 0], [1, 1, 0, 2], [2, 0, 1, 2], [0, 0, 1, 1]])
    assert baselines.recency(labels).tolist() == [0, 2, 2, 1]
    # counts: [2,2,0] tie 0/1; [1,2,1] 1; [1,1,2] 2; [2,2,0] tie 0/1
    first, tied = baselines.uniform_votes(labels, 3, "first", majority=1)
    assert first.tolist() == [0, 1, 2, 0] and tied.tolist() == [True, False, False, True]
    latest, _ = baselines.uniform_votes(labels, 3, "latest", majority=1)
    assert latest.tolist() == [0, 1, 2, 1]  # prompt 0 shows 0 last among the tied {0, 1}; prompt 3 shows 1 last
    majority, _ = baselines.uniform_votes(labels, 3, "majority", majority=1)
    assert majority.tolist() == [1, 1, 2, 1]
    # with class-balanced demonstrations every prompt ties
    balanced = np.array([np.random.default_rng(s).permutation([0, 0, 1, 1]) for s in range(20)])
    assert baselines.uniform_votes(balanced, 2, "first", 0)[1].all()


def test_slot_features_give_each_slot_and_label_word_its_own_weight():
    labels = np.array([[1, 0, 1]])
    positional = baselines.slot_features(labels, 2, by_label=False)
    assert positional[0].tolist() == [[0, 1, 0], [1, 0, 1]]
    theta = np.array([1.0, 2.0, 3.0])
    assert (positional @ theta)[0].tolist() == [2.0, 4.0]  # class 0: slot 2; class 1: slots 1 and 3
    slot_label = baselines.slot_features(labels, 2, by_label=True)
    theta = np.arange(6.0)  # label word 0: slots 0..2 -> 0, 1, 2; label word 1: 3, 4, 5
    assert (slot_label @ theta)[0].tolist() == [1.0, 3.0 + 5.0]


def balanced_demos(n: int, k: int, n_classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([rng.permutation(np.arange(k) % n_classes) for _ in range(n)])


def test_fitted_kernels_recover_a_planted_query_free_rule():
    demos = balanced_demos(300, 8, 2, seed=0)
    profile = np.arange(1, 9.0) ** 2  # recency-weighted vote
    target = np.argmax(baselines.slot_features(demos, 2, False) @ profile, axis=1)
    select = np.arange(200)
    fitted = {b.name: b for b in baselines.query_free_baselines(demos, target, select, 2)}
    held = np.arange(200, 300)
    assert np.mean(fitted["positional"].predictions[held] == target[held]) >= 0.97
    assert np.mean(fitted["slot_label"].predictions[held] == target[held]) >= 0.95
    # a model that never answers class 2 is matched by a slot x label-word kernel, not by a positional one
    demos3 = balanced_demos(300, 6, 3, seed=1)
    never_2 = np.where(demos3[:, -1] == 2, demos3[:, -2], demos3[:, -1])
    never_2 = np.where(never_2 == 2, 0, never_2)
    fitted3 = {b.name: b for b in baselines.query_free_baselines(demos3, never_2, select, 3)}
    assert np.mean(fitted3["slot_label"].predictions[held] == never_2[held]) > np.mean(fitted3["positional"].predictions[held] == never_2[held])
    assert fitted["uniform"].tied.all()


K, N, N_SELECT, N_HELDOUT = 8, 160, 100, 60


def planted_set(world: str, seed: int):
    """Prompts, reconstructions and cosine inputs of one seed: head L0 H0 is planted, L0 H1 is noise.
    "positional": ICL and the head both vote with weights that rise with the slot, whatever the query.
    "query": ICL answers the query's own label and the head weighs the demonstrations of that label."""
    rng = np.random.default_rng(seed)
    demos = balanced_demos(N, K, 2, seed=100 + seed)
    gold = np.arange(N) % 2
    if world == "positional":
        icl = np.argmax(baselines.slot_features(demos, 2, False) @ (np.arange(1, K + 1.0) ** 2), axis=1)
    else:
        icl = gold.copy()
    planted = icl.copy()
    noise = rng.integers(0, 2, N)
    prompts = pl.DataFrame({
        "prompt_id": np.arange(N), "example_id": [f"q{i}" for i in range(N)], "label": gold,
        "demo_ids": [[f"d{i}-{j}" for j in range(K)] for i in range(N)], "demo_labels": demos.tolist(),
    })
    grid = np.stack([planted, noise], axis=1).astype(np.int16)[:, None, :]  # (prompts, 1 layer, 2 heads)
    recon = pa.Table.from_pydict({
        "prompt_id": np.tile(np.arange(N), 4), "example_id": prompts["example_id"].to_list() * 4, "label": np.tile(gold, 4),
        "prediction": np.tile(icl, 4), "kernel": np.repeat(["max", "label", "mean", "max_nosink"], N),
        "n_layers": np.ones(4 * N, int), "n_heads": np.full(4 * N, 2), "head_predictions": [g.ravel() for g in grid] * 4,
    }, schema=tables.RECONSTRUCTION)
    ids = set(prompts["example_id"]) | {d for row in prompts["demo_ids"].to_list() for d in row}
    vectors = {i: rng.normal(size=4) for i in sorted(ids)}
    hidden = {i: rng.normal(size=(2, 4)) for i in sorted(ids)}
    rows = heldout.heldout_rows(prompts, recon, vectors, hidden, "enc", 2, N_SELECT, N_HELDOUT, seed=7)
    return pl.DataFrame(rows).with_columns(seed=pl.lit(seed, pl.Int64))


@pytest.mark.parametrize("world, kernel", [("positional", False), ("query", True)])
def test_a_planted_head_reads_like_a_kernel_only_when_its_weights_depend_on_the_query(world, kernel):
    frame = pl.concat([planted_set(world, s) for s in (0, 1)])
    heads = pl.DataFrame([{"seed": s, "kernel": k, "layer": 0, "head": h, "r2_slot": 0.1 * (h + 1) + 0.01 * s,
                           "r2_slot_label": 0.5} for s in (0, 1) for k in ("max", "label", "mean", "max_nosink") for h in (0, 1)])
    table = pl.DataFrame(table2.table2_columns(frame, n_resamples=1000, seed=0, by_name={"heads": heads}))
    assert set(table["n_heldout"]) == {N_HELDOUT} and set(table["n_seeds"]) == {2}
    r2 = row_of(table, "head_max", "r2_slot")
    assert r2["mean"] == pytest.approx(0.105) and np.isnan(r2["ci_low"])  # the planted head L0 H0, mean over seeds
    head = row_of(table, "head_max", "agreement")
    assert head["mean"] == 1.0 and head["choices"] == "L0 H0 (every seed)"
    assert table2_rows.reads_like_kernel(table, "head_max") is kernel
    verdict = table2_report.verdict_sentence(table)
    assert verdict.startswith("**Reads like a kernel:**" if kernel else "**Not separated from a query-free reading:**"), verdict
    lines = "\n".join(table2_report.table2_lines(table, "toy", "enc"))
    assert "| max kernel (paper) |" in lines and "span-mean kernel |" not in lines.split("reads like a kernel |")[-1]
    assert "same head in every seed, identical predictions" in lines
    title = {f"m / {world}": table}
    assert assemble.table2_verdicts(title)[1] == (f"It does in: m / {world}. It does not in: none." if kernel
                                                   else f"It does in: none. It does not in: m / {world}.")
    gain = row_of(table, "head_max", table2_rows.GAIN)
    reference = gain["reference"]
    assert reference in baselines.BASELINES
    # the gain is the head's agreement minus the strongest reading's, paired on the same prompts
    rows = frame.rows(named=True)
    agreeing = {b: np.mean([r["prediction"] == r["icl_prediction"] for r in rows if r["method"] == b]) for b in baselines.BASELINES}
    assert reference == max(baselines.BASELINES, key=agreeing.get)
    grid = np.stack([agreement_by_id(rows, "head_max", s) - agreement_by_id(rows, reference, s) for s in (0, 1)], axis=1)
    assert gain["mean"] == pytest.approx(grid.mean())
    assert (gain["seeds_ci_low"], gain["seeds_ci_high"]) == pytest.approx(stats.hierarchical_bootstrap_ci(grid, 1000, 0))
    # every kernel reading picks the same planted head with the same predictions: one row of evidence
    same = dict(table.select("method", "same_as").iter_rows())
    assert same["head_max"] == "" and same["head_label"] == same["head_mean"] == same["head_max_nosink"] == "head_max"
    # the uniform kernel ties on every class-balanced prompt, and says so
    assert row_of(table, "uniform", "tie_rate")["mean"] == 1.0


def agreement_by_id(rows: list[dict], method: str, seed: int) -> np.ndarray:
    """A method's agreement with ICL on each prompt of a seed, in example-id order (Table 2's grid)."""
    of_method = sorted((r for r in rows if r["seed"] == seed and r["method"] == method), key=lambda r: r["example_id"])
    return np.array([r["prediction"] == r["icl_prediction"] for r in of_method], dtype=float)


def row_of(table: pl.DataFrame, method: str, metric: str) -> dict:
    return table.filter((pl.col("method") == method) & (pl.col("metric") == metric)).row(0, named=True)


def test_seeds_that_hold_out_different_examples_get_per_seed_intervals():
    rng = np.random.default_rng(0)
    rows = []
    for seed, ids in ((0, range(0, 30)), (1, range(10, 40))):
        for i in ids:
            rows.append({"prompt_id": i, "example_id": f"e{i}", "method": "head_max", "choice": "c",
                         "select_agreement": 1.0, "label": int(rng.integers(2)), "icl_prediction": int(rng.integers(2)),
                         "null_prediction": 0, "prediction": int(rng.integers(2)), "seed": seed})
    frame = pl.DataFrame(rows)
    got = row_of(pl.DataFrame(table2.table2_columns(frame, 500, 0)), "head_max", "agreement")
    v = np.array([r["prediction"] == r["icl_prediction"] for r in rows], dtype=float)
    seed = np.array([r["seed"] for r in rows])
    assert got["mean"] == pytest.approx(np.mean([v[seed == s].mean() for s in (0, 1)]))
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(stats.bootstrap_ci(v, 500, 0))
    groups = [v[seed == s] for s in (0, 1)]
    assert (got["seeds_ci_low"], got["seeds_ci_high"]) == pytest.approx(stats.ragged_hierarchical_bootstrap_ci(groups, 500, 0))
    assert got["n_heldout"] == 30


def test_health_counts_predictions_per_class_and_flags_a_class_the_model_never_answers():
    frame = pl.DataFrame({
        "prompt_id": range(6), "example_id": [f"e{i}" for i in range(6)], "method": "head_max", "choice": "c",
        "select_agreement": 1.0, "label": [0, 1, 2, 0, 1, 2], "icl_prediction": [0, 1, 0, 0, 1, 1],
        "null_prediction": 0, "prediction": [0, 0, 2, 0, 1, 2], "seed": 0,
    })
    columns = table2.health(frame, ["negative", "neutral", "positive"])
    h = {(r["method"], r["class_name"]): r for r in pl.DataFrame(columns).iter_rows(named=True)}
    assert h[("icl", "positive")]["predicted"] == 0 and h[("icl", "positive")]["under_predicted"]
    assert h[("icl", "negative")]["predicted"] == 3 and h[("icl", "negative")]["recall"] == 1.0
    assert not h[("icl", "neutral")]["under_predicted"]  # 3 of 6 predicted against a gold share of 2 of 6
    assert h[("head_max", "neutral")]["recall"] == pytest.approx(0.5)
    assert h[("head_max", "positive")]["recall"] == 1.0
    table = pl.DataFrame(table2.table2_columns(frame, 100, 0))
    lines = "\n".join(table2_report.health_lines(pl.DataFrame(columns), table))
    assert "**Under-predicted class:** ICL never predicts 'positive' (gold share 33%, recall 0.00)." in lines
    assert "agreement with a 2-class answer" in lines
    assert "| positive | 33% | 0% / 0.00 | 33% / 1.00 |" in lines
