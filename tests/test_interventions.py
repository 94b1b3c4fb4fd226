"""The causal check's choices and statistics: which heads are edited, which positions each edit
touches, and the report's measures against hand counts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from workflow_scripts import heldout, interventions, interventions_report, schemas
from workflow_scripts import reconstruction as rc

from .test_reconstruction import SPECIAL, C, synthetic_set


def test_top_random_and_bottom_heads():
    scores = np.array([[0.9, 0.1, 0.5, 0.5], [0.2, 0.95, 0.3, 0.0], [0.6, 0.4, 0.7, 0.8]])
    targets = interventions.choose_targets(scores, [1, 3], draws=4, seed=0)
    by = {(t.kind, t.m, t.draw): t.heads for t in targets}
    assert by[("top", 1, 0)] == ((1, 1),) and by[("top", 3, 0)] == ((1, 1), (0, 0), (2, 3))
    assert by[("bottom", 1, 0)] == ((1, 3),) and by[("bottom", 3, 0)] == ((1, 3), (0, 1), (1, 0))
    for draw in range(4):
        random = by[("random", 3, draw)]
        top = set(by[("top", 3, 0)])
        assert not set(random) & top and len(set(random)) == 3
        assert sorted(layer for layer, _ in random) == sorted(layer for layer, _ in top)  # one per top head, same layer
    assert len({by[("random", 3, d)] for d in range(4)}) > 1  # draws differ
    again = interventions.choose_targets(scores, [1, 3], draws=4, seed=0)
    assert [t.heads for t in again] == [t.heads for t in targets]
    assert by[("top", 3, 0)] and targets[1].name.startswith("L")
    with pytest.raises(interventions.InterventionError, match="interventions.top_m"):
        interventions.choose_targets(scores, [7], draws=1, seed=0)


def test_a_layer_full_of_top_heads_borrows_controls_from_other_layers():
    scores = np.array([[0.9, 0.8], [0.1, 0.2]])
    random = [t for t in interventions.choose_targets(scores, [2], draws=3, seed=1) if t.kind == "random"]
    assert all(set(t.heads) == {(1, 0), (1, 1)} for t in random)


def test_the_top_head_is_table_2s_head():
    prompts, shards, _ = synthetic_set(n_prompts=30, seed=0)
    recon = pa.Table.from_pydict(rc.head_predictions(prompts, shards, C), schema=schemas.RECONSTRUCTION)
    split = heldout.head_split(recon, "max", 18, 12, 5)
    scores, held_ids, held_labels, select_ids = split.select_agreement(), split.ids[split.heldout], split.gold[split.heldout], split.ids[split.select]
    frame = prompts.to_pandas()
    rows = pd.DataFrame(heldout.heldout_rows(frame, recon, *embeddings_for(frame), "enc", C, 18, 12, seed=5))
    chosen = rows[rows.method == "head_max"].choice.iloc[0]
    top = interventions.choose_targets(scores, [1], 1, 0)[0]
    assert top.name == chosen == f"L{SPECIAL[0]} H{SPECIAL[1]}"
    assert sorted(held_ids) == sorted(set(rows.prompt_id)) and not set(held_ids) & set(select_ids)
    labels = frame.set_index("prompt_id").label
    assert list(held_labels) == [labels[i] for i in held_ids]


def embeddings_for(frame: pd.DataFrame) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    ids = sorted(set(frame.example_id) | {d for row in frame.demo_ids for d in row})
    return {i: rng.normal(size=5) for i in ids}, {i: rng.normal(size=(2, 4)) for i in ids}


def test_edits_touch_the_right_positions():
    prompt = {"x_start": [1, 5, 9], "y_pos": [3, 7, 11], "demo_labels": [0, 1, 0]}
    assert interventions.span_positions(prompt["x_start"], prompt["y_pos"], prompt["demo_labels"], 0) == (1, 2, 3, 9, 10, 11)
    assert interventions.span_positions(prompt["x_start"], prompt["y_pos"], prompt["demo_labels"], 2) == ()
    targets = [interventions.Target("top", 2, 0, ((0, 1), (1, 0)))]
    knockout = np.arange(2 * 2 * 3, dtype=float).reshape(2, 2, 3)
    edits = interventions.prompt_edits(prompt, targets, knockout, predicted=0, steer_to=1, fraction=0.5)
    families = {family: edit for family, _, edit in edits}
    np.testing.assert_array_equal(families["knockout"].replace, [knockout[0, 1], knockout[1, 0]])
    assert families["label_knockout"].drop == (3, 7, 11)
    steer = families["steer"]
    assert steer.move_from == (1, 2, 3, 9, 10, 11) and steer.move_to == (5, 6, 7) and steer.move_fraction == 0.5
    # a prompt that shows no demonstration of the runner-up class cannot be steered
    assert "steer" not in {f for f, _, _ in interventions.prompt_edits(prompt, targets, knockout, 0, 2, 1.0)}


def test_margin_and_runner_up():
    logits = np.array([1.0, 3.0, 2.5])
    assert interventions.margin(logits, 1) == pytest.approx(0.5)
    assert interventions.margin(logits, 0) == pytest.approx(-2.0)
    assert interventions.runner_up(logits) == 2


def test_knockout_values_are_the_mean_head_output_or_zero():
    rng = np.random.default_rng(3)
    outputs = rng.normal(size=(5, 2, 3, 4)).astype(np.float16)
    shards = pa.table({"head_outputs": [o.ravel().tolist() for o in outputs]})
    np.testing.assert_allclose(interventions.knockout_values("mean", shards, 2, 3, 4), outputs.astype(np.float64).mean(axis=0))
    assert not interventions.knockout_values("zero", shards, 2, 3, 4).any()
    with pytest.raises(interventions.InterventionError, match="extraction.head_outputs"):
        interventions.knockout_values("mean", pa.table({"head_outputs": pa.array([None], pa.list_(pa.float16()))}), 2, 3, 4)


def edit_rows() -> pd.DataFrame:
    """Two seeds x two held-out examples, one family, top / two random draws / bottom heads, m = 1."""
    rows = []
    for seed in (0, 1):
        for example, label in (("a", 0), ("b", 1)):
            for target, draw, prediction in (("top", 0, 1), ("random", 0, 0), ("random", 1, 1), ("bottom", 0, 0)):
                if (seed, example, target) == (1, "b", "top"):
                    prediction = 0  # the one top edit that does not flip
                rows.append({"seed": seed, "prompt_id": {"a": 0, "b": 1}[example], "example_id": example, "label": label,
                             "family": "knockout", "target": target, "m": 1, "draw": draw, "heads": "L0 H0",
                             "steer_class": -1, "original_prediction": 0, "prediction": prediction,
                             "margin_before": 2.0, "margin_after": -1.0 if prediction else 1.5})
    return pd.DataFrame(rows)


def test_summary_against_hand_counts():
    summary = pd.DataFrame(interventions_report.summarize(edit_rows(), 200, 0))

    def value(target, measure):
        return interventions_report.cell(summary, "knockout", target, 1, measure)["mean"]

    # top flips a (both seeds) and b (seed 0 only): per example 1.0 and 0.5
    assert value("top", "flip_rate") == pytest.approx(0.75)
    assert value("random", "flip_rate") == pytest.approx(0.5)  # one draw of two flips, everywhere
    assert value("bottom", "flip_rate") == 0.0
    assert value("top - random", "flip_rate") == pytest.approx(0.25)
    assert value("top", "margin_change") == pytest.approx((-3.0 * 3 + -0.5) / 4)
    # accuracy after: a (label 0) is right when not flipped, b (label 1) when flipped
    assert value("top", "accuracy_after") == pytest.approx((0 + 0.5) / 2)
    unedited = interventions_report.cell(summary, "none", "none", 0, "accuracy_after")
    assert unedited["mean"] == 0.5 and unedited.n_seeds == 2 and unedited.n_prompts == 2
    assert (summary.ci_low <= summary["mean"] + 1e-12).all() and (summary["mean"] <= summary.ci_high + 1e-12).all()


def test_verdict_follows_the_paired_interval():
    summary = pd.DataFrame({"family": ["knockout"] * 2, "target": ["top - random"] * 2, "m": [1, 4],
                            "measure": ["flip_rate"] * 2, "mean": [0.3, 0.0], "ci_low": [0.1, -0.1], "ci_high": [0.5, 0.1]})
    assert "for m = 1 (paired 95% CI above 0)" in interventions_report.verdict(summary, "knockout")
    summary.loc[0, "ci_low"] = -0.05
    text = interventions_report.verdict(summary, "knockout")
    assert "changes no more predictions" in text and "does not show" in text
    assert "no prompt could be edited" in interventions_report.verdict(summary, "steer")
