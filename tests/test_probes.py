"""Section 5.4: probes find the signal planted in one head's keys or values, and only there; their
label-shuffled control stays at chance; the report reads them by balanced accuracy against it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workflow_scripts import probes, report, schemas
from workflow_scripts.report_files import Outputs

from .test_reconstruction import C, H, K, L, synthetic_set

D = 8
KEY_CELL = (1, 2, schemas.DEMO_OFFSETS.index(0))  # layer, head, offset index where keys encode the zero-shot answer
VALUE_CELL = (0, 0, schemas.DEMO_OFFSETS.index(1))  # where values encode the demonstration's label


def with_vectors(n_prompts: int = 40, seed: int = 0, key_signal: float = 4.0, majority: float | None = None):
    """Synthetic prompts whose shards keep top keys/values for every layer; returns the zero-shot answers.

    key_signal scales what KEY_CELL's keys carry of the zero-shot answer (0: nothing); with `majority`
    that share of the zero-shot answers is class 0, the rest uniform."""
    prompts, shards, _ = synthetic_set(n_prompts=n_prompts, seed=seed)
    rng = np.random.default_rng(seed)
    demo_ids = {r["prompt_id"]: r["demo_ids"] for r in prompts.to_pylist()}
    demo_labels = {r["prompt_id"]: r["demo_labels"] for r in prompts.to_pylist()}
    def answer() -> int:
        return 0 if majority is not None and rng.random() < majority else int(rng.integers(C))
    zero_shot = {d: answer() for ids in demo_ids.values() for d in ids}
    rows = shards.to_pylist()
    shape = [L, H, K, len(schemas.DEMO_OFFSETS), D]
    for row in rows:
        keys = rng.normal(size=shape)
        values = rng.normal(size=shape)
        for i, (d, y) in enumerate(zip(demo_ids[row["prompt_id"]], demo_labels[row["prompt_id"]])):
            keys[KEY_CELL[0], KEY_CELL[1], i, KEY_CELL[2], :C] += key_signal * np.eye(C)[zero_shot[d]]
            values[VALUE_CELL[0], VALUE_CELL[1], i, VALUE_CELL[2], :C] += 4 * np.eye(C)[y]
        row.update(kv_layers=[0, 1], top_shape=shape, top_keys=keys.ravel().tolist(), top_values=values.ravel().tolist(),
                   top_positions=[0] * (L * H * K))
    rows[0].update(kv_layers=None, top_shape=None, top_keys=None, top_values=None, top_positions=None)  # beyond kv_max_prompts
    return prompts, pa.Table.from_pylist(rows, schema=schemas.SHARD), zero_shot


def test_probe_samples_align_vectors_with_their_demonstrations():
    prompts, shards, _ = with_vectors(n_prompts=4)
    samples = probes.probe_samples(prompts, shards)
    assert samples["keys"].shape == (L, H, len(schemas.DEMO_OFFSETS), 3 * K, D)  # one prompt kept nothing
    kept = [r for r in shards.to_pylist() if r["top_keys"] is not None]
    by_id = {r["prompt_id"]: r for r in prompts.to_pylist()}
    first = np.asarray(kept[0]["top_keys"], dtype=np.float32).reshape(kept[0]["top_shape"])
    np.testing.assert_array_equal(samples["keys"][1, 2, 3, 4], first[1, 2, 4, 3])  # demo 4 of the first kept prompt
    assert samples["example_ids"][:K].tolist() == by_id[kept[0]["prompt_id"]]["demo_ids"]
    assert samples["labels"][K : 2 * K].tolist() == by_id[kept[1]["prompt_id"]]["demo_labels"]


def probe_frame(**kwargs) -> pd.DataFrame:
    prompts, shards, zero_shot = with_vectors(**kwargs)
    samples = probes.probe_samples(prompts, shards)
    answers = np.array([zero_shot[d] for d in samples["example_ids"]])
    return pa.table(probes.probe_table(samples, answers, C, ridge=0.01, folds=5, seed=0)).to_pandas(), samples, answers


def test_probes_find_the_planted_cells_and_only_those_and_their_shuffled_control_does_not():
    table, samples, answers = probe_frame()
    assert len(table) == 2 * L * H * len(schemas.DEMO_OFFSETS)
    for vector, (layer, head, offset) in (("key", KEY_CELL), ("value", VALUE_CELL)):
        part = table[table.vector == vector].set_index(["layer", "head", "offset"])
        cell = (layer, head, schemas.DEMO_OFFSETS[offset])
        for score in ("accuracy", "balanced_accuracy"):
            assert part[score].loc[cell] > 0.9
            assert part[score].drop(index=cell).max() < 0.6  # noise: chance is about 1/3
        # The same probe on targets shuffled across demonstrations finds nothing, even where the signal is.
        assert abs(part.shuffled_balanced_accuracy.loc[cell] - 1 / C) < 0.12
        assert (part.shuffled_balanced_accuracy - 1 / C).abs().max() < 0.15
        assert part.chance.iloc[0] == pytest.approx(1 / C)
        assert part.n_samples.iloc[0] == 39 * K
        assert part.majority.iloc[0] == pytest.approx(np.bincount(answers if vector == "key" else samples["labels"]).max() / (39 * K))


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
    assert {"balanced_accuracy", "shuffled_balanced_accuracy", "chance"} <= set(schemas.PROBES.names)
    schemas.write_table(columns, schemas.PROBES, tmp_path / "probes.parquet")
    back = schemas.read_table(tmp_path / "probes.parquet", schemas.PROBES)
    assert back.schema.field("balanced_accuracy").type == pa.float64()
    assert back.schema.field("shuffled_balanced_accuracy").type == pa.float64()
    assert back.to_pydict() == columns
    stale = pa.table({name: columns[name] for name in columns if name != "shuffled_balanced_accuracy"})
    pq.write_table(stale, tmp_path / "stale.parquet")  # a probes file from before the control
    with pytest.raises(schemas.TableError, match="shuffled_balanced_accuracy"):
        schemas.read_table(tmp_path / "stale.parquet", schemas.PROBES)


def two_seeds(**kwargs) -> pd.DataFrame:
    return pd.concat([probe_frame(seed=seed, **kwargs)[0] for seed in (0, 1)])


def test_report_reads_the_best_probes_against_their_shuffled_control(tmp_path):
    table = report.probes_table(report.mean_probes(two_seeds()))
    for vector, (layer, head, offset) in (("key", KEY_CELL), ("value", VALUE_CELL)):
        row = table[table.vector == vector].iloc[0]
        assert (row.layer, row["head"], row.offset) == (layer, head, schemas.DEMO_OFFSETS[offset])
        assert row.balanced_accuracy > 0.9 and row.beats_control
        assert row.difference == pytest.approx(row.balanced_accuracy - row.shuffled_balanced_accuracy)
        assert row.control_max < 0.5 and row.chance == pytest.approx(1 / C)
    out = Outputs(figure=str(tmp_path / "probes.png"), csv=str(tmp_path / "p.csv"), html=str(tmp_path / "p.html"),
                  piece=str(tmp_path / "p.md"))
    report.render_probes(two_seeds(), "m / t / random", out, dpi=50)
    text = (tmp_path / "p.md").read_text()
    assert text.count("**beats its shuffled control**") == 2 and "does not beat" not in text
    assert (tmp_path / "probes.png").stat().st_size > 0
    assert pd.read_csv(out.csv).beats_control.tolist() == [True, True]


def test_report_does_not_credit_a_key_probe_at_the_majority_share():
    # Keys carry nothing and 80% of the zero-shot answers are one class: plain accuracy of the best key
    # probe sits near the majority share, its balanced accuracy does not beat the shuffled control.
    frame = two_seeds(key_signal=0.0, majority=0.8)
    table = report.probes_table(report.mean_probes(frame)).set_index("vector")
    key = table.loc["key"]
    assert key.majority > 0.75 and key.accuracy > key.majority - 0.1
    assert not key.beats_control and key.balanced_accuracy < 0.5
    assert table.loc["value"].beats_control
    lines = "\n".join(report.probes_lines(table.reset_index(), "probes.png"))
    assert "Best key probe" in lines and "**does not beat its shuffled control**" in lines
    assert "Best value probe" in lines and "**beats its shuffled control**" in lines
    assert "majority share, which shows nothing by itself" in lines


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
