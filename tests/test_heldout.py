"""Section 5.5: the select/held-out split, kernel-regression baselines and Table 2 over seeds."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from workflow_scripts import heldout, schemas, stats, table2
from workflow_scripts import reconstruction as rc

from .test_reconstruction import C, synthetic_set


@pytest.mark.parametrize("counts,n_select,n_heldout", [([30, 30], 24, 20), ([20, 20, 21], 30, 30), ([5, 9], 7, 7)])
def test_select_and_heldout_are_disjoint_sized_and_stratified(counts, n_select, n_heldout):
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(len(counts)), counts))
    select, held = heldout.select_heldout(labels, n_select, n_heldout, seed=3)
    assert len(select) == n_select and len(held) == n_heldout
    assert not set(select) & set(held)
    for part in (select, held):
        expected = np.asarray(counts) / sum(counts) * len(part)
        assert np.all(np.abs(np.bincount(labels[part], minlength=len(counts)) - expected) <= 1.5)
    again = heldout.select_heldout(labels, n_select, n_heldout, seed=3)
    np.testing.assert_array_equal(select, again[0])
    assert not np.array_equal(select, heldout.select_heldout(labels, n_select, n_heldout, seed=4)[0])


def test_ablation_subset_is_class_balanced_even_when_ids_are_sorted_by_label():
    ids = np.arange(40)
    labels = np.repeat([0, 1], 20)  # a data file sorted by label
    chosen = heldout.ablation_ids(ids[::-1], labels[::-1], 10)
    assert np.bincount(labels[chosen]).tolist() == [5, 5]
    assert chosen.tolist() == [0, 1, 2, 3, 4, 20, 21, 22, 23, 24]
    np.testing.assert_array_equal(heldout.ablation_ids(ids, labels, 0), ids)


def test_select_heldout_too_large_names_the_keys():
    with pytest.raises(heldout.HeldoutError, match=r"'analysis.n_select'=8 and 'analysis.n_heldout'=5 need 13 prompts; the set has 12"):
        heldout.select_heldout(np.zeros(12, dtype=int), 8, 5, seed=0)


def test_kernel_regression_follows_the_normalized_formula():
    rng = np.random.default_rng(0)
    sims = rng.normal(size=(50, 6))
    labels = rng.integers(0, 3, size=(50, 6))
    got = heldout.kernel_regression(sims, labels, 3)
    for s, y, g in zip(sims, labels, got):
        y_hat = sum(k * np.eye(3)[c] for k, c in zip(s, y)) / s.sum()
        assert g == np.argmax(y_hat)
    # a negative total similarity flips the vote, as the formula says: [-0.5, -0.1] / -0.6 favours class 0
    assert heldout.kernel_regression(np.array([-0.5, -0.1]), np.array([0, 1]), 2) == 0
    assert heldout.kernel_regression(np.array([0.5, 0.1]), np.array([0, 1]), 2) == 0
    assert heldout.kernel_regression(np.array([0.1, 0.5]), np.array([0, 1]), 2) == 1


def set_with_baselines(seed: int = 0):
    """Synthetic prompts and reconstructions plus random embeddings and 3-layer hidden states."""
    prompts, shards, _ = synthetic_set(n_prompts=30, seed=seed)
    recon = pa.Table.from_pydict(rc.head_predictions(prompts, shards, C), schema=schemas.RECONSTRUCTION)
    rng = np.random.default_rng(seed)
    frame = prompts.to_pandas()
    ids = set(frame.example_id) | {d for row in frame.demo_ids for d in row}
    embeddings = {i: rng.normal(size=5) for i in sorted(ids)}
    hidden = {i: rng.normal(size=(3, 4)) for i in sorted(ids)}
    return frame, recon, embeddings, hidden


def test_heldout_rows_choose_on_select_and_report_only_heldout():
    frame, recon, embeddings, hidden = set_with_baselines()
    cols = pd.DataFrame(heldout.heldout_rows(frame, recon, embeddings, hidden, "enc", C, 18, 12, seed=5))
    select, held = heldout.select_heldout(frame.sort_values("prompt_id").label.to_numpy(), 18, 12, seed=5)
    assert set(cols.method) == {"head_max", "head_label", "head_mean", "kr_encoder", "kr_hidden"}
    assert sorted(set(cols.prompt_id)) == sorted(frame.prompt_id.to_numpy()[held])
    _, _, icl, grid = rc.prediction_grid(recon, "max")
    scores = (grid[select] == icl[select, None, None]).mean(axis=0)
    layer, head = np.unravel_index(np.argmax(scores), scores.shape)
    head_rows = cols[cols.method == "head_max"].sort_values("prompt_id")
    assert head_rows.choice.iloc[0] == f"L{layer} H{head}" and head_rows.select_agreement.iloc[0] == pytest.approx(scores.max())
    np.testing.assert_array_equal(head_rows.prediction, grid[held, layer, head])
    # the special head of the synthetic set follows the ICL prediction exactly, so it must be the one chosen
    assert head_rows.choice.iloc[0] == "L1 H2" and (head_rows.prediction == head_rows.icl_prediction).all()
    assert (cols.null_prediction == np.bincount(icl[select], minlength=C).argmax()).all()
    # encoder baseline against a direct computation on the held-out prompts
    enc = cols[cols.method == "kr_encoder"].set_index("prompt_id")
    for row in frame.itertuples():
        if row.prompt_id in enc.index:
            q = embeddings[row.example_id] / np.linalg.norm(embeddings[row.example_id])
            s = np.array([q @ embeddings[d] / np.linalg.norm(embeddings[d]) for d in row.demo_ids])
            assert enc.prediction[row.prompt_id] == heldout.kernel_regression(s, np.asarray(row.demo_labels), C)
    # hidden-state baseline: the chosen layer is the best on the select split
    layer = int(cols[cols.method == "kr_hidden"].choice.iloc[0].split()[-1])
    agree = []
    for candidate in range(3):
        sims = heldout.cosine_similarities({i: v[candidate] for i, v in hidden.items()}, frame.example_id.tolist(), frame.demo_ids.tolist())
        pred = heldout.kernel_regression(sims, np.stack(frame.demo_labels.map(np.asarray)), C)
        agree.append(np.mean(pred[select] == icl[select]))
    assert layer == int(np.argmax(agree))


def test_table2_against_a_direct_computation():
    rng = np.random.default_rng(0)
    frames = []
    for seed in (0, 1, 2):
        n = 40
        label = rng.integers(0, 2, n)
        icl = np.where(rng.random(n) < 0.7, label, 1 - label)
        for method in ("head_max", "kr_encoder"):
            pred = np.where(rng.random(n) < 0.8, icl, 1 - icl)
            frames.append(pd.DataFrame({
                "prompt_id": np.arange(n), "example_id": [f"e{i}" for i in range(n)], "method": method,
                "choice": f"c{seed}", "select_agreement": 0.5, "label": label, "icl_prediction": icl,
                "null_prediction": 1, "prediction": pred, "seed": seed,
            }))
    frame = pd.concat(frames, ignore_index=True)
    table = pd.DataFrame(table2.summarize(frame, n_resamples=500, seed=0)).set_index(["method", "metric"])
    assert set(table.index) == {("icl", "accuracy"), ("null", "agreement"), ("null", "accuracy"),
                                ("head_max", "agreement"), ("head_max", "accuracy"),
                                ("kr_encoder", "agreement"), ("kr_encoder", "accuracy")}
    rows = frame[frame.method == "head_max"]
    per_seed = rows.groupby("seed").apply(lambda r: np.mean(r.prediction == r.icl_prediction), include_groups=False)
    got = table.loc[("head_max", "agreement")]
    assert got["mean"] == pytest.approx(per_seed.mean()) and got["sd"] == pytest.approx(per_seed.std(ddof=1))
    per_example = rows.assign(v=rows.prediction == rows.icl_prediction).groupby("example_id").v.mean()
    assert (got.ci_low, got.ci_high) == pytest.approx(stats.bootstrap_ci(per_example.to_numpy(), 500, 0))
    assert got.ci_low < got["mean"] < got.ci_high
    assert got.choices == "seed 0: c0; seed 1: c1; seed 2: c2"
    assert table2.describe_choices(rows.assign(choice="same")) == "same (every seed)"
    icl = table.loc[("icl", "accuracy")]
    first = frame[frame.method == "head_max"]
    assert icl["mean"] == pytest.approx(np.mean(first.icl_prediction == first.label))
    assert table.loc[("null", "agreement")]["mean"] == pytest.approx(np.mean(first.icl_prediction == 1))
    assert (table.n_seeds == 3).all() and (table.n_heldout == 40).all()


def test_table2_refuses_seeds_that_held_out_different_examples():
    frame = pd.DataFrame({
        "prompt_id": [0, 0], "example_id": ["a", "b"], "method": "head_max", "choice": "c", "select_agreement": 1.0,
        "label": 0, "icl_prediction": 0, "null_prediction": 0, "prediction": 0, "seed": [0, 1],
    })
    with pytest.raises(ValueError, match="split_seed"):
        table2.summarize(frame, 100, 0)
