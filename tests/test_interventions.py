"""The causal check's choices and statistics: which heads are edited (the mass-matched control on a
planted attention fixture), which positions each edit touches, and the report's measures, paired
bootstrap and verdicts against hand counts."""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from workflow_scripts.analysis import head_choice, heldout
from workflow_scripts.analysis import reconstruction as rc
from workflow_scripts.causal import interventions
from workflow_scripts.core import tables
from workflow_scripts.report import interventions as interventions_report

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
    recon = pa.Table.from_pydict(rc.head_predictions(prompts, shards, C), schema=tables.RECONSTRUCTION)
    split = head_choice.head_split(recon, "max", 18, 12, 5)
    scores, held_ids, held_labels, select_ids = split.select_agreement(), split.ids[split.heldout], split.gold[split.heldout], split.ids[split.select]
    frame = pl.from_arrow(prompts)
    rows = pl.DataFrame(heldout.heldout_rows(frame, recon, *embeddings_for(frame), "enc", C, 18, 12, seed=5))
    chosen = rows.filter(pl.col("method") == "head_max")["choice"][0]
    top = interventions.choose_targets(scores, [1], 1, 0)[0]
    assert top.name == chosen == f"L{SPECIAL[0]} H{SPECIAL[1]}"
    assert sorted(held_ids) == sorted(set(rows["prompt_id"])) and not set(held_ids) & set(select_ids)
    labels = dict(frame.select("prompt_id", "label").iter_rows())
    assert list(held_labels) == [labels[i] for i in held_ids]


def embeddings_for(frame: pl.DataFrame) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    ids = sorted(set(frame["example_id"]) | {d for row in frame["demo_ids"].to_list() for d in row})
    return {i: rng.normal(size=5) for i in ids}, {i: rng.normal(size=(2, 4)) for i in ids}


# The planted fixture: 3 layers x 4 heads, two demonstrations (spans [1, 3] class 0 and [5, 7] class 1),
# per head the last token's attention on all demonstrations (DEMOS) and on the predicted class's
# (PREDICTED), in multiples of 1/16 so float16 holds them exactly. The top two heads by agreement are
# (0, 0) and (1, 0); their layers' other heads attend little to the demonstrations, layer 2's a lot.
DEMOS = np.array([[0.75, 0.4375, 0.125, 0.125], [0.625, 0.4375, 0.125, 0.125], [0.75, 0.625, 0.6875, 0.5625]])
PREDICTED = np.array([[0.5, 0.4375, 0.0625, 0.0625], [0.5, 0.375, 0.0625, 0.0625], [0.5, 0.4375, 0.5, 0.0625]])
SCORES = np.array([[0.9, 0.1, 0.2, 0.3], [0.8, 0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4]])
TOP = {(0, 0), (1, 0)}


def planted_set() -> tuple[pa.Table, pa.Table]:
    """Prompts 0 and 1 (the select split) carry DEMOS / PREDICTED, predicting class 0 and 1 and placing
    the mass at a span's first and last position in turn; prompt 2 puts everything on the demonstrations."""
    prompts = {name: [] for name in tables.PROMPTS.names}
    shards = {name: [] for name in tables.SHARD.names}
    n_tokens = 12
    for pid, prediction in ((0, 0), (1, 1), (2, 0)):
        spans = {0: (1, 3), 1: (5, 7)}
        at = {c: spans[c][pid % 2] for c in spans}  # first position of each span, then the last
        attention = np.zeros((3, 4, n_tokens))
        attention[..., at[prediction]] = PREDICTED
        attention[..., at[1 - prediction]] = DEMOS - PREDICTED
        attention[..., 4] = (1 - DEMOS) / 2  # between the spans: not a demonstration
        attention[..., 11] = (1 - DEMOS) / 2
        if pid == 2:
            attention[:] = 0
            attention[..., 2] = 1.0
        row = {"prompt_id": pid, "example_id": f"e{pid}", "label": 0, "demo_ids": ["d0", "d1"], "demo_labels": [0, 1],
               "text": "", "input_ids": list(range(n_tokens)), "x_start": [1, 5], "x_end": [3, 7], "y_pos": [3, 7],
               "query_start": 8, "query_end": n_tokens, "label_token_ids": [11, 12]}
        shard = {"prompt_id": pid, "n_tokens": n_tokens, "n_layers": 3, "n_heads": 4, "label_logits": [0.0, 1.0],
                 "prediction": prediction, "attention": attention.astype(np.float16).ravel().tolist()}
        add_rows(prompts, shards, row, shard)
    return as_tables(prompts, shards)


def add_rows(prompts: dict, shards: dict, row: dict, shard: dict) -> None:
    """One prompt's PROMPTS row and SHARD row appended to column lists (optional columns stay null)."""
    for name in prompts:
        prompts[name].append(row.get(name))
    for name in shards:
        shards[name].append(shard.get(name))


def as_tables(prompts: dict, shards: dict) -> tuple[pa.Table, pa.Table]:
    return pa.Table.from_pydict(prompts, schema=tables.PROMPTS), pa.Table.from_pydict(shards, schema=tables.SHARD)


def test_attention_masses_average_the_select_prompts_spans():
    prompts, shards = planted_set()
    masses = interventions.attention_masses(prompts, shards, [0, 1])
    np.testing.assert_array_equal(masses["demos"], DEMOS)
    np.testing.assert_array_equal(masses["predicted"], PREDICTED)
    everything = interventions.attention_masses(prompts, shards, [0, 1, 2])["demos"]
    np.testing.assert_allclose(everything, (2 * DEMOS + 1) / 3)  # prompt 2 counts only when asked for


def test_matched_heads_are_closer_in_mass_than_same_layer_heads_and_never_top():
    masses = {"demos": DEMOS, "predicted": PREDICTED}
    draws = 6
    matched = interventions.matched_targets(SCORES, masses, [2], draws, seed=0)
    random = [t for t in interventions.choose_targets(SCORES, [2], draws, seed=0) if t.kind == "random"]
    assert {t.families for t in matched} == {("knockout", "label_knockout"), ("steer",)}
    top_mass = {basis: np.mean([mass[h] for h in TOP]) for basis, mass in masses.items()}
    for target in matched:
        basis = interventions.MASS_OF[target.families[0]]
        assert len(set(target.heads)) == 2 and not set(target.heads) & TOP
        gap = abs(np.mean([masses[basis][h] for h in target.heads]) - top_mass[basis])
        same_layer = [abs(np.mean([masses[basis][h] for h in r.heads]) - top_mass[basis]) for r in random if r.draw == target.draw]
        assert gap < same_layer[0], (target, same_layer)
        if basis == "demos":  # by hand: the three nearest to .75 and to .625 all lie in layer 2
            assert {layer for layer, _ in target.heads} == {2}
    assert len({t.heads for t in matched if t.families == ("steer",)}) > 1  # draws differ
    assert [t.heads for t in interventions.matched_targets(SCORES, masses, [2], draws, seed=0)] == [t.heads for t in matched]
    # With one candidate per pick the draw is the greedy nearest, worked out by hand: (0, 0) at .75
    # takes (2, 0) at .75, then (1, 0) at .625 takes (2, 1); for steering (0, 0) at .5 takes (2, 0)
    # (first of the two at .5), then (1, 0) at .5 takes (2, 2).
    nearest = interventions.matched_targets(SCORES, masses, [2], 1, seed=0, nearest=1)
    assert [t.heads for t in nearest] == [((2, 0), (2, 1)), ((2, 0), (2, 2))]
    assert interventions.head_set_mass(masses, "steer", nearest[1].heads) == pytest.approx(0.5)
    assert interventions.head_set_mass(masses, "knockout", nearest[0].heads) == pytest.approx(0.6875)


def test_edits_touch_the_right_positions():
    prompt = {"x_start": [1, 5, 9], "y_pos": [3, 7, 11], "demo_labels": [0, 1, 0]}
    assert interventions.span_positions(prompt["x_start"], prompt["y_pos"], prompt["demo_labels"], 0) == (1, 2, 3, 9, 10, 11)
    assert interventions.span_positions(prompt["x_start"], prompt["y_pos"], prompt["demo_labels"], 2) == ()
    assert interventions.span_positions(prompt["x_start"], prompt["y_pos"], prompt["demo_labels"]) == (1, 2, 3, 5, 6, 7, 9, 10, 11)
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
    # a matched draw is edited in the families it was matched for only
    steer_only = [interventions.Target("matched", 2, 0, ((0, 0), (1, 1)), ("steer",))]
    assert [f for f, _, _ in interventions.prompt_edits(prompt, steer_only, knockout, 0, 1, 1.0)] == ["steer"]


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


def edit_rows() -> pl.DataFrame:
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
                             "margin_before": 2.0, "margin_after": -1.0 if prediction else 1.5,
                             "attention_mass": {"top": 0.5, "random": 0.25 + 0.1 * draw, "bottom": 0.125}[target]})
    return pl.DataFrame(rows)


def hand_bootstrap(values: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float]:
    """The percentile bootstrap of the mean, written out: resample examples with replacement."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    return tuple(np.quantile(means, [0.025, 0.975]))


def test_summary_against_hand_counts():
    summary = pl.DataFrame(interventions_report.effect_summary(edit_rows(), 200, 0), schema=interventions_report.SUMMARY_SCHEMA)

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
    assert unedited["mean"] == 0.5 and unedited["n_seeds"] == 2 and unedited["n_prompts"] == 2
    # accuracy change, paired per prompt: a was right and is wrong twice (-1), b was wrong and is right
    # in seed 0 (+1, 0: +.5); edited minus unedited accuracy, .25 - .5
    change = interventions_report.cell(summary, "knockout", "top", 1, "accuracy_change")
    assert change["mean"] == pytest.approx(value("top", "accuracy_after") - unedited["mean"]) == pytest.approx(-0.25)
    assert (change["ci_low"], change["ci_high"]) == pytest.approx(hand_bootstrap(np.array([-1.0, 0.5]), 200, 0))
    assert value("top - random", "accuracy_change") == pytest.approx(-0.25 - 0.0)  # random: a -.5, b +.5
    assert value("top", "attention_mass") == 0.5 and value("random", "attention_mass") == pytest.approx(0.3)
    assert np.isnan(interventions_report.cell(summary, "knockout", "top", 1, "attention_mass")["ci_low"])
    bounded = summary.filter(pl.col("measure") != "attention_mass")
    assert (bounded["ci_low"] <= bounded["mean"] + 1e-12).all() and (bounded["mean"] <= bounded["ci_high"] + 1e-12).all()


N_EXAMPLES = 20


def flip_rows(flips: dict[str, set[int]], masses: dict[str, float], family: str = "knockout") -> pl.DataFrame:
    """One seed, 20 held-out examples: labels 0 (examples 0-9) and 1 (10-19), every unedited prediction
    0 (accuracy .5); each target flips the examples in `flips` to class 1, one draw per target."""
    rows = []
    for i in range(N_EXAMPLES):
        for target, flipped in flips.items():
            rows.append({"seed": 0, "prompt_id": i, "example_id": f"e{i:02d}", "label": int(i >= 10), "family": family,
                         "target": target, "m": 4, "draw": 0, "heads": "L0 H0", "steer_class": 1 if family == "steer" else -1,
                         "original_prediction": 0, "prediction": int(i in flipped), "margin_before": 1.0,
                         "margin_after": -1.0 if i in flipped else 1.0, "attention_mass": masses[target]})
    return pl.DataFrame(rows)


MASSES = {"top": 0.54, "random": 0.40, "matched": 0.53, "bottom": 0.1}


def verdict_of(flips: dict[str, set[int]], family: str = "knockout") -> tuple[str, pl.DataFrame]:
    summary = pl.DataFrame(interventions_report.effect_summary(flip_rows(flips, MASSES, family), 500, 0),
                           schema=interventions_report.SUMMARY_SCHEMA)
    return interventions_report.verdict(summary, family), summary


def test_flips_without_an_accuracy_change_are_not_shown_to_drive_the_correct_prediction():
    # the top heads flip 5 right answers to wrong and 5 wrong to right: 50% flips, accuracy unchanged
    text, summary = verdict_of({"top": {0, 1, 2, 3, 4, 10, 11, 12, 13, 14}, "random": set(), "matched": set(), "bottom": set()})
    change = interventions_report.cell(summary, "knockout", "top", 4, "accuracy_change")
    per_example = np.array([-1.0] * 5 + [0.0] * 5 + [1.0] * 5 + [0.0] * 5)
    assert change["mean"] == 0.0 and (change["ci_low"], change["ci_high"]) == pytest.approx(hand_bootstrap(per_example, 500, 0))
    assert "m = 4: flips 50% [" in text and "but does not change ICL accuracy (+.00 [" in text
    assert "not shown to drive the correct prediction" in text and "drive the correct prediction, beyond" not in text
    assert "top - same-layer random +50% [" in text and "top - matched +50% [" in text
    assert "top .54, same-layer random .40, matched .53" in text and "on the demonstrations (select split)" in text


def test_the_verdict_says_when_accuracy_rises_falls_or_a_control_does_as_much():
    none = {"random": set(), "matched": set(), "bottom": set()}
    rises, _ = verdict_of({"top": set(range(10, 18)), **none})
    assert "but raises ICL accuracy (+.40 [" in rises and "away from the correct answer" in rises
    falls, _ = verdict_of({"top": set(range(8)), **none})
    assert "and lowers ICL accuracy (-.40 [" in falls and "these heads drive the correct prediction, beyond" in falls
    # heads matched in attention mass flip as many: the effect is the mass's, not the kernel heads'
    matched, _ = verdict_of({"top": set(range(8)), **none, "matched": set(range(8))})
    assert "top - matched +0% [0, 0]" in matched and "no more predictions than in matched heads" in matched
    assert "not shown to be specific to the kernel heads" in matched
    steady, _ = verdict_of({"top": set(), **none}, "steer")
    assert steady.startswith("Kernel steering in the top-m kernel heads: m = 4: moves 0% [0, 0] of predictions to the steered class")
    assert "not shown to drive the prediction" in steady and "predicted class's demonstrations" in steady
    assert "no prompt could be edited" in interventions_report.verdict(pl.DataFrame(schema=interventions_report.SUMMARY_SCHEMA), "steer")


def test_the_table_and_figure_show_the_matched_control(tmp_path):
    _, summary = verdict_of({"top": set(range(8)), "random": {0}, "matched": {1, 2}, "bottom": set()})
    frame = interventions_report.table(summary)
    assert frame["heads"].to_list() == ["top", "random", "matched", "bottom", "top - random", "top - matched"]
    assert frame["attention mass"].to_list() == [".54", ".40", ".53", ".10", "", ""]
    assert frame.filter(pl.col("heads") == "top")["ICL accuracy change"][0].startswith("-.40 [")
    interventions_report.figure(summary, "t", str(tmp_path / "f.png"), 40)
    assert (tmp_path / "f.png").stat().st_size > 0
