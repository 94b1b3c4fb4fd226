"""Section 5.4: probes find the signal planted in one head's keys or values, and only there; their
label-shuffled control stays at chance; their token-identity control reads what the word at the
position alone gives; the report reads them by balanced accuracy against both."""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workflow_scripts.analysis import probes
from workflow_scripts.core import table_io, tables
from workflow_scripts.report import probes as probes_report
from workflow_scripts.report.files import Outputs

from .test_reconstruction import C, H, K, L, synthetic_set

D = 8
KEY_CELL = (1, 2, tables.DEMO_OFFSETS.index(0))  # layer, head, offset index where keys encode the zero-shot answer
VALUE_CELL = (0, 0, tables.DEMO_OFFSETS.index(1))  # where values encode the demonstration's label


def with_vectors(n_prompts: int = 40, seed: int = 0, key_signal: float = 4.0, majority: float | None = None,
                 peaks_before_labels: bool = False):
    """Synthetic prompts whose shards keep top keys/values for every layer; returns the zero-shot answers.

    key_signal scales what KEY_CELL's keys carry of the zero-shot answer (0: nothing); with `majority`
    that share of the zero-shot answers is class 0, the rest uniform. With peaks_before_labels every head
    peaks on the token before each demonstration's label token, which holds its label word's id, so
    VALUE_CELL's offset +1 stands on the label word (else every peak is position 0 and the prompts'
    token ids are random)."""
    prompts, shards, _ = synthetic_set(n_prompts=n_prompts, seed=seed)
    if peaks_before_labels:
        prompts = label_words_at_labels(prompts)
    y_pos = {r["prompt_id"]: r["y_pos"] for r in prompts.to_pylist()}
    rng = np.random.default_rng(seed)
    demo_ids = {r["prompt_id"]: r["demo_ids"] for r in prompts.to_pylist()}
    demo_labels = {r["prompt_id"]: r["demo_labels"] for r in prompts.to_pylist()}
    def answer() -> int:
        return 0 if majority is not None and rng.random() < majority else int(rng.integers(C))
    zero_shot = {d: answer() for ids in demo_ids.values() for d in ids}
    rows = shards.to_pylist()
    shape = [L, H, K, len(tables.DEMO_OFFSETS), D]
    for row in rows:
        keys = rng.normal(size=shape)
        values = rng.normal(size=shape)
        for i, (d, y) in enumerate(zip(demo_ids[row["prompt_id"]], demo_labels[row["prompt_id"]])):
            keys[KEY_CELL[0], KEY_CELL[1], i, KEY_CELL[2], :C] += key_signal * np.eye(C)[zero_shot[d]]
            values[VALUE_CELL[0], VALUE_CELL[1], i, VALUE_CELL[2], :C] += 4 * np.eye(C)[y]
        before = np.asarray(y_pos[row["prompt_id"]]) - 1
        peaks = np.broadcast_to(before, (L, H, K)) if peaks_before_labels else np.zeros((L, H, K), int)
        row.update(kv_layers=[0, 1], top_shape=shape, top_keys=keys.ravel().tolist(), top_values=values.ravel().tolist(),
                   top_positions=peaks.ravel().tolist())
    rows[0].update(kv_layers=None, top_shape=None, top_keys=None, top_values=None, top_positions=None)  # beyond kv_max_prompts
    return prompts, pa.Table.from_pylist(rows, schema=tables.SHARD), zero_shot


def label_words_at_labels(prompts: pa.Table) -> pa.Table:
    """The prompts with each demonstration's label token set to its label word's id."""
    rows = prompts.to_pylist()
    for row in rows:
        for y, pos in zip(row["demo_labels"], row["y_pos"]):
            row["input_ids"][pos] = row["label_token_ids"][y]
    return pa.Table.from_pylist(rows, schema=tables.PROMPTS)


def test_probe_samples_align_vectors_with_their_demonstrations():
    prompts, shards, _ = with_vectors(n_prompts=4)
    samples = probes.probe_samples(prompts, shards)
    assert samples["keys"].shape == (L, H, len(tables.DEMO_OFFSETS), 3 * K, D)  # one prompt kept nothing
    kept = [r for r in shards.to_pylist() if r["top_keys"] is not None]
    by_id = {r["prompt_id"]: r for r in prompts.to_pylist()}
    first = np.asarray(kept[0]["top_keys"], dtype=np.float32).reshape(kept[0]["top_shape"])
    np.testing.assert_array_equal(samples["keys"][1, 2, 3, 4], first[1, 2, 4, 3])  # demo 4 of the first kept prompt
    assert samples["example_ids"][:K].tolist() == by_id[kept[0]["prompt_id"]]["demo_ids"]
    assert samples["labels"][K : 2 * K].tolist() == by_id[kept[1]["prompt_id"]]["demo_labels"]
    assert samples["tokens"].shape == samples["keys"].shape[:-1]
    ids = by_id[kept[0]["prompt_id"]]["input_ids"]
    # every peak is position 0: offset -1 is clipped to the prompt, offset +2 is the third token
    assert samples["tokens"][1, 2, 0, 4] == ids[0] and samples["tokens"][0, 1, 3, 2] == ids[2]


def test_tokens_after_peaks_before_labels_are_the_label_words():
    prompts, shards, _ = with_vectors(n_prompts=4, peaks_before_labels=True)
    samples = probes.probe_samples(prompts, shards)
    after_peak = samples["tokens"][:, :, tables.DEMO_OFFSETS.index(1)]  # (L, H, samples)
    assert (after_peak == np.asarray([11, 12, 13])[samples["labels"]]).all()


def test_peak_tokens_clip_to_the_prompt():
    ids = [100, 101, 102, 103, 104]
    got = probes.peak_tokens(ids, np.array([[0, 2, 4]]))
    assert got.tolist() == [[[100, 100, 101, 102, 103], [101, 102, 103, 104, 104], [103, 104, 104, 104, 104]]]


def token_scores(tokens, target, n_groups: int = 100):
    groups = np.arange(len(target)) % n_groups  # a demonstration seen in several prompts: its samples share a fold
    return probes.token_identity_scores(np.asarray(tokens), [np.asarray(target)], groups, C, ridge=0.01, folds=5, seed=0)[0]


def test_token_identity_is_perfect_where_the_token_fixes_the_target():
    target = np.random.default_rng(0).integers(0, C, 300)
    assert token_scores(500 + target, target) == 1.0  # token id 500 + y: a label word per class


def test_token_identity_is_at_chance_where_the_token_carries_nothing():
    rng = np.random.default_rng(1)
    target = rng.integers(0, C, 600)
    assert abs(token_scores(rng.integers(0, 4, 600), target) - 1 / C) < 0.06  # a few words, independent of the target
    # Every word unseen in training: each fold answers its training folds' most frequent class.
    folds = probes.stats.group_folds(np.arange(600) % 100, 5, 0)
    answer = np.empty(600, int)
    for fold in range(5):
        answer[folds == fold] = np.bincount(target[folds != fold], minlength=C).argmax()
    by_hand = np.mean([np.mean(answer[target == c] == c) for c in range(C)])
    assert token_scores(np.arange(600), target) == pytest.approx(by_hand, abs=1e-12)
    assert abs(by_hand - 1 / C) < 0.06


def test_token_identity_matches_each_words_majority_by_hand():
    # Word 7 is class 0 for 80 of its 100 samples, word 9 class 1 for 80 of 100 (one sample per
    # demonstration, 20 per fold); every training fold keeps those majorities, so the probe on the one-hot
    # answers each word's majority class: recall 80/100 for both classes (class 2 never occurs).
    tokens = np.repeat([7, 9], 100)
    target = np.r_[np.repeat([0, 1], [80, 20]), np.repeat([1, 0], [80, 20])]
    order = np.random.default_rng(2).permutation(200)  # spread each word's minority over the folds
    assert token_scores(tokens[order], target[order], n_groups=200) == pytest.approx(0.8, abs=1e-12)


def test_token_identity_is_fitted_once_per_distinct_token_column(monkeypatch):
    rng = np.random.default_rng(3)
    target = rng.integers(0, C, 150)
    column = 500 + target
    noise = rng.integers(0, 3, 150)
    tokens = np.stack([[column, noise], [noise, column], [column, column]])  # (3, 2, n): two distinct columns
    calls = []
    fit = probes.stats.probe_predictions_many
    monkeypatch.setattr(probes.stats, "probe_predictions_many", lambda *a, **k: calls.append(1) or fit(*a, **k))
    scores = token_scores(tokens, target)
    assert len(calls) == 2 and scores.shape == (3, 2)
    assert (scores == np.where(tokens[..., 0] == column[0], 1.0, scores[0, 1])).all()
    # a second target shares each fit's Gram matrix and scores as if fitted alone
    other = rng.integers(0, C, 150)
    both = probes.token_identity_scores(tokens, [target, other], np.arange(150) % 100, C, 0.01, 5, 0)
    np.testing.assert_array_equal(both, np.stack([scores, token_scores(tokens, other)]))


def probe_frame(**kwargs) -> tuple[pl.DataFrame, dict, np.ndarray]:
    prompts, shards, zero_shot = with_vectors(**kwargs)
    samples = probes.probe_samples(prompts, shards)
    answers = np.array([zero_shot[d] for d in samples["example_ids"]])
    return pl.DataFrame(probes.probe_table(samples, answers, C, ridge=0.01, folds=5, seed=0)), samples, answers


def test_probes_find_the_planted_cells_and_only_those_and_their_shuffled_control_does_not():
    table, samples, answers = probe_frame()
    assert len(table) == 2 * L * H * len(tables.DEMO_OFFSETS)
    for vector, (layer, head, offset) in (("key", KEY_CELL), ("value", VALUE_CELL)):
        part = table.filter(pl.col("vector") == vector)
        at_cell = (pl.col("layer") == layer) & (pl.col("head") == head) & (pl.col("offset") == tables.DEMO_OFFSETS[offset])
        cell, rest = part.filter(at_cell), part.filter(~at_cell)
        for score in ("accuracy", "balanced_accuracy"):
            assert cell[score].item() > 0.9
            assert rest[score].max() < 0.6  # noise: chance is about 1/3
        # The same probe on targets shuffled across demonstrations finds nothing, even where the signal is.
        assert abs(cell["shuffled_balanced_accuracy"].item() - 1 / C) < 0.12
        assert (part["shuffled_balanced_accuracy"] - 1 / C).abs().max() < 0.15
        assert part["chance"][0] == pytest.approx(1 / C)
        assert part["n_samples"][0] == 39 * K
        assert part["majority"][0] == pytest.approx(np.bincount(answers if vector == "key" else samples["labels"]).max() / (39 * K))


def test_shuffled_control_is_drawn_from_the_probe_seed():
    prompts, shards, zero_shot = with_vectors(n_prompts=12)
    samples = probes.probe_samples(prompts, shards)
    answers = np.array([zero_shot[d] for d in samples["example_ids"]])
    first, again, other = (probes.probe_table(samples, answers, C, 0.01, 5, seed) for seed in (0, 0, 1))
    assert first["shuffled_balanced_accuracy"] == again["shuffled_balanced_accuracy"]
    assert first["shuffled_balanced_accuracy"] != other["shuffled_balanced_accuracy"]


def test_probe_columns_round_trip_through_the_schema(tmp_path):
    prompts, shards, zero_shot = with_vectors(n_prompts=12)
    samples = probes.probe_samples(prompts, shards)
    answers = np.array([zero_shot[d] for d in samples["example_ids"]])
    columns = probes.probe_table(samples, answers, C, ridge=0.01, folds=5, seed=0)
    assert {"balanced_accuracy", "shuffled_balanced_accuracy", "chance"} <= set(tables.PROBES.names)
    table_io.write_table(columns, tables.PROBES, tmp_path / "probes.parquet")
    back = table_io.read_table(tmp_path / "probes.parquet", tables.PROBES)
    assert back.schema.field("balanced_accuracy").type == pa.float64()
    assert back.schema.field("shuffled_balanced_accuracy").type == pa.float64()
    assert back.to_pydict() == columns
    for control in ("shuffled_balanced_accuracy", "token_balanced_accuracy"):
        stale = pa.table({name: columns[name] for name in columns if name != control})
        pq.write_table(stale, tmp_path / "stale.parquet")  # a probes file from before the control
        with pytest.raises(table_io.TableError, match=control):
            table_io.read_table(tmp_path / "stale.parquet", tables.PROBES)


def two_seeds(**kwargs) -> pl.DataFrame:
    """The probes tables of two seeds, stacked, as the report reads them."""
    return pl.concat([probe_frame(seed=seed, **kwargs)[0] for seed in (0, 1)])


def by_vector(table: pl.DataFrame) -> dict[str, dict]:
    return {row["vector"]: row for row in table.iter_rows(named=True)}


def test_report_reads_the_best_probes_against_their_shuffled_control(tmp_path):
    table = by_vector(probes_report.probes_table(probes_report.mean_probes(two_seeds())))
    for vector, (layer, head, offset) in (("key", KEY_CELL), ("value", VALUE_CELL)):
        row = table[vector]
        assert (row["layer"], row["head"], row["offset"]) == (layer, head, tables.DEMO_OFFSETS[offset])
        assert row["balanced_accuracy"] > 0.9 and row["beats_control"]
        assert row["difference"] == pytest.approx(row["balanced_accuracy"] - row["shuffled_balanced_accuracy"])
        assert row["control_max"] < 0.5 and row["chance"] == pytest.approx(1 / C)
        # every peak is position 0, whose random token ids say nothing of a demonstration's target
        assert row["token_balanced_accuracy"] < 0.5 and row["beats_token"]
        assert row["token_difference"] == pytest.approx(row["balanced_accuracy"] - row["token_balanced_accuracy"])
        assert row["token_margin"] == pytest.approx(1 / np.sqrt(39 * K))
    out = Outputs(figure=str(tmp_path / "probes.png"), csv=str(tmp_path / "p.csv"), html=str(tmp_path / "p.html"),
                  piece=str(tmp_path / "p.md"))
    probes_report.write_probes_section(two_seeds(), "m / t / random", out, dpi=50)
    text = (tmp_path / "p.md").read_text()
    assert text.count("**beats its shuffled control**") == 2 and "**does not beat" not in text
    assert text.count("**beats its token-identity control**") == 2
    assert (tmp_path / "probes.png").stat().st_size > 0
    assert pl.read_csv(out.csv)["beats_control"].to_list() == [True, True]


def test_report_does_not_credit_a_key_probe_at_the_majority_share():
    # Keys carry nothing and 80% of the zero-shot answers are one class: plain accuracy of the best key
    # probe sits near the majority share, its balanced accuracy does not beat the shuffled control.
    frame = two_seeds(key_signal=0.0, majority=0.8)
    table = probes_report.probes_table(probes_report.mean_probes(frame))
    key = by_vector(table)["key"]
    assert key["majority"] > 0.75 and key["accuracy"] > key["majority"] - 0.1
    assert not key["beats_control"] and key["balanced_accuracy"] < 0.5
    assert by_vector(table)["value"]["beats_control"]
    lines = "\n".join(probes_report.probes_lines(table, "probes.png"))
    assert "Best key probe" in lines and "**does not beat its shuffled control**" in lines
    assert "Best value probe" in lines and "**beats its shuffled control**" in lines
    assert "majority share, which shows nothing by itself" in lines


def test_report_says_a_value_probe_at_the_label_word_reads_only_the_word():
    # Every head's offset +1 stands on the label word: the value probe planted there reaches about 1.0,
    # and the token alone reaches 1.0. Keys are fitted to zero-shot answers the word does not give.
    frame = two_seeds(peaks_before_labels=True)
    at_label = frame.filter((pl.col("vector") == "value") & (pl.col("offset") == 1))
    assert (at_label["token_balanced_accuracy"] == 1.0).all()  # the same for every layer and head
    table = probes_report.probes_table(probes_report.mean_probes(frame))
    value, key = by_vector(table)["value"], by_vector(table)["key"]
    assert (value["layer"], value["head"], value["offset"]) == (0, 0, 1) and value["balanced_accuracy"] > 0.9 and value["beats_control"]
    assert value["token_balanced_accuracy"] == 1.0 and not value["beats_token"]
    assert key["beats_token"] and key["token_balanced_accuracy"] < 0.5
    lines = "\n".join(probes_report.probes_lines(table, "probes.png"))
    assert lines.count("**does not beat its token-identity control**") == 1
    assert lines.count("**beats its token-identity control**") == 1
    assert "but the token at that position alone reaches 1.000" in lines
    assert "reads which word stands there, not a value that carries e(y_i) beyond it" in lines
    assert "No cell beats both its token by a clear margin and the shuffled control's highest" in lines


def planted_cells(cells: dict) -> pl.DataFrame:
    """Mean-probe rows for one vector kind: every cell at chance unless given as (balanced, token)."""
    rows = [{"vector": vector, "layer": layer, "head": head, "offset": offset, "accuracy": 0.5, "majority": 0.5,
             "balanced_accuracy": cells.get((layer, head, offset), (0.5, 0.5))[0], "shuffled_balanced_accuracy": 0.5,
             "token_balanced_accuracy": cells.get((layer, head, offset), (0.5, 0.5))[1], "chance": 0.5, "n_samples": 400}
            for vector in ("key", "value") for layer in (0, 1) for head in (0, 1) for offset in tables.DEMO_OFFSETS]
    return pl.DataFrame(rows)


def test_report_names_the_cell_that_reads_more_than_its_word():
    # The best value cell is the label word itself (1.0 against its token's 1.0); another cell reaches
    # 0.9 where its token gives 0.6: a gain of 0.3, over the clear margin 1 / sqrt(400) = 0.05.
    value = by_vector(probes_report.probes_table(planted_cells({(1, 0, 0): (1.0, 1.0), (0, 1, 2): (0.9, 0.6)})))["value"]
    assert (value["layer"], value["head"], value["offset"]) == (1, 0, 0) and not value["beats_token"]
    assert (value["gain_layer"], value["gain_head"], value["gain_offset"]) == (0, 1, 2)
    assert value["gain_difference"] == pytest.approx(0.3) and value["token_margin"] == pytest.approx(0.05) and value["gain_beats_token"]
    line = probes_report.token_verdict(value)
    assert "**does not beat its token-identity control**" in line
    assert "The largest gain over the token is at L0 H1 offset +2: 0.900 against 0.600 (+0.300), a clear margin" in line
    # A gain within the margin is not credited: 0.54 against 0.5 on 400 demonstrations.
    near = by_vector(probes_report.probes_table(planted_cells({(1, 0, 0): (1.0, 1.0), (0, 1, 2): (0.54, 0.5)})))
    assert not near["value"]["gain_beats_token"]


def test_probes_without_kept_vectors_name_the_config_key():
    prompts, shards, _ = synthetic_set(n_prompts=3)
    with pytest.raises(probes.ProbeError, match=r"extraction\.kv_layers"):
        probes.probe_samples(prompts, shards)


def test_too_few_demonstrations_for_the_folds_name_the_config_key():
    prompts, shards, zero_shot = with_vectors(n_prompts=2)
    samples = probes.probe_samples(prompts, shards)
    answers = np.array([zero_shot[d] for d in samples["example_ids"]])
    with pytest.raises(probes.ProbeError, match=r"analysis\.probe_folds'=10"):
        probes.probe_table(samples, answers, C, ridge=0.01, folds=10, seed=0)
