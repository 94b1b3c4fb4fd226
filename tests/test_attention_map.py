"""Tests of the Fig. 2 attention map: resampling, prompt segments, alignment and averaging."""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from workflow_scripts.analysis import attention_map as am
from workflow_scripts.core import table_io, tables


def test_resample_upsample_hand_computed():
    np.testing.assert_allclose(am.resample(np.array([0.0, 10.0, 20.0]), 5), [0, 5, 10, 15, 20])
    np.testing.assert_allclose(am.resample(np.array([0.0, 10.0]), 3), [0, 5, 10])
    # grid 0, 0.75, 1.5, 2.25, 3 over [1, 5, 3, 7]
    np.testing.assert_allclose(am.resample(np.array([1.0, 5.0, 3.0, 7.0]), 5), [1, 4, 4, 4, 7])


def test_resample_downsample_and_same_length():
    np.testing.assert_allclose(am.resample(np.arange(7.0), 3), [0, 3, 6])
    # grid 0, 1.5, 3 over [0, 10, 20, 30]
    np.testing.assert_allclose(am.resample(np.array([0.0, 10.0, 20.0, 30.0]), 3), [0, 15, 30])
    values = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    np.testing.assert_allclose(am.resample(values, 5), values)


def test_resample_keeps_leading_axes():
    values = np.array([[[0.0, 10.0, 20.0], [1.0, 1.0, 4.0]]])  # (1, 2, 3)
    out = am.resample(values, 5)
    assert out.shape == (1, 2, 5)
    np.testing.assert_allclose(out[0, 0], [0, 5, 10, 15, 20])
    np.testing.assert_allclose(out[0, 1], [1, 1, 1, 2.5, 4])


def test_resample_length_one_and_zero():
    np.testing.assert_allclose(am.resample(np.array([[7.0], [2.0]]), 4), [[7] * 4, [2] * 4])
    empty = am.resample(np.zeros((2, 3, 0)), 4)
    assert empty.shape == (2, 3, 4)
    assert np.isnan(empty).all()


def test_segments_hand_built():
    prompt = {"x_start": [2, 7], "y_pos": [5, 10], "query_start": 13, "n_tokens": 16}
    spans = am.segments(prompt)
    assert spans == [
        ("prefix", 0, 2), ("x1", 2, 5), ("y1", 5, 6), ("sep1", 6, 7),
        ("x2", 7, 10), ("y2", 10, 11), ("sep2", 11, 13), ("query", 13, 16),
    ]
    covered = [t for _, s, e in spans for t in range(s, e)]
    assert covered == list(range(prompt["n_tokens"]))  # every token once, in order


def test_segments_empty_prefix_and_separator():
    prompt = {"x_start": [0, 4], "y_pos": [3, 6], "query_start": 7, "n_tokens": 9}
    spans = am.segments(prompt)
    assert spans[0] == ("prefix", 0, 0)
    assert ("sep1", 4, 4) in spans
    assert [t for _, s, e in spans for t in range(s, e)] == list(range(9))


# Two prompts of the same template whose inputs and queries differ in length (resample_length 3).
# A: prefix [0], x1 1-2, y1 3, sep1 4, x2 5-7, y2 8, sep2 9, query 10-11
A = dict(x_start=[1, 5], y_pos=[3, 8], query_start=10,
         values=[1, 2, 4, 5, 6, 0, 3, 6, 7, 8, 10, 20])
# B: prefix [0], x1 1-3, y1 4, sep1 5, x2 6, y2 7, sep2 8, query 9-12
B = dict(x_start=[1, 6], y_pos=[4, 7], query_start=9,
         values=[3, 0, 2, 4, 1, 2, 8, 9, 4, 0, 3, 6, 9])
# aligned A: 1 | 2 3 4 | 5 | 6 | 0 3 6 | 7 | 8 | 10 15 20
# aligned B: 3 | 0 2 4 | 1 | 2 | 8 8 8 | 9 | 4 | 0 4.5 9
MEAN = [2, 1, 2.5, 4, 3, 4, 4, 5.5, 7, 8, 6, 5, 9.75, 14.5]
NAMES = ["prefix"] + ["x1"] * 3 + ["y1", "sep1"] + ["x2"] * 3 + ["y2", "sep2"] + ["query"] * 3


def head_values(values) -> np.ndarray:
    """(1 layer, 2 heads, T): head 1 is an affine map of head 0, which averaging must preserve."""
    v = np.asarray(values, dtype=np.float64)
    return np.stack([v, 2 * v + 1])[None]


def tables_of(*specs):
    prompts = {name: [] for name in tables.PROMPTS.names}
    shards = {name: [] for name in tables.SHARD.names}
    for pid, spec in enumerate(specs):
        T = len(spec["values"])
        att = head_values(spec["values"])
        row = {
            "prompt_id": pid, "example_id": f"e{pid}", "label": 0,
            "demo_ids": ["d0", "d1"], "demo_labels": [0, 1], "text": "", "input_ids": list(range(T)),
            "x_start": spec["x_start"], "x_end": spec["y_pos"], "y_pos": spec["y_pos"],
            "query_start": spec["query_start"], "query_end": T, "label_token_ids": [5, 6],
        }
        shard = {"prompt_id": pid, "n_tokens": T, "n_layers": 1, "n_heads": 2,
                 "label_logits": [0.0, 1.0], "prediction": 1, "attention": att.ravel().tolist()}
        for name in prompts:
            prompts[name].append(row.get(name))  # no content-free twins
        for name in shards:
            shards[name].append(shard.get(name))  # optional captures stay null
    return (pa.Table.from_pydict(prompts, schema=tables.PROMPTS),
            pa.Table.from_pydict(shards, schema=tables.SHARD))


def test_average_map_hand_computed():
    mean, names = am.average_map(*tables_of(A, B), resample_length=3)
    assert mean.shape == (1, 2, len(MEAN))
    assert names == NAMES
    np.testing.assert_allclose(mean[0, 0], MEAN)
    np.testing.assert_allclose(mean[0, 1], 2 * np.array(MEAN) + 1)


def test_average_map_single_prompt_is_its_alignment():
    mean, _ = am.average_map(*tables_of(B), resample_length=3)
    np.testing.assert_allclose(mean[0, 0], [3, 0, 2, 4, 1, 2, 8, 8, 8, 9, 4, 0, 4.5, 9])


def test_average_map_ignores_empty_spans():
    # C: x2 is empty (x_start == y_pos), so its x2 columns are NaN and the mean there is A's alone.
    # C: prefix [0], x1 1-2, y1 3, sep1 4, x2 -, y2 5, sep2 6, query 7-8
    C = dict(x_start=[1, 5], y_pos=[3, 5], query_start=7, values=[5, 4, 6, 9, 0, 1, 2, 4, 8])
    # aligned C: 5 | 4 5 6 | 9 | 0 | nan nan nan | 1 | 2 | 4 6 8
    mean, _ = am.average_map(*tables_of(A, C), resample_length=3)
    np.testing.assert_allclose(mean[0, 0], [3, 3, 4, 5, 7, 3, 0, 3, 6, 4, 5, 7, 10.5, 14])


def test_write_map_schema(tmp_path):
    prompts, shards = tables_of(A, B)
    table_io.write_table(prompts, tables.PROMPTS, tmp_path / "prompts.parquet")
    table_io.write_table(shards, tables.SHARD, tmp_path / "shards" / "0.parquet")
    out = tmp_path / "attention_map.parquet"
    am.write_map(tmp_path / "prompts.parquet", [str(tmp_path / "shards" / "0.parquet")], 3, out, tmp_path / "mass.parquet")
    assert table_io.read_table(tmp_path / "mass.parquet", tables.LABEL_MASS).num_rows == 1
    table = pl.from_arrow(table_io.read_table(out, tables.ATTENTION_MAP))
    assert len(table) == 2 * len(MEAN)
    head1 = table.filter(pl.col("head") == 1).sort("column")
    assert head1["column"].to_list() == list(range(len(MEAN)))
    assert head1["segment"].to_list() == NAMES
    np.testing.assert_allclose(head1["attention"].to_numpy(), 2 * np.array(MEAN) + 1, rtol=1e-6)
    assert (table["layer"] == 0).all()


def test_label_mass_hand_computed():
    # A: label tokens 3 and 8 hold 5 + 7 of head 0's 72 and 11 + 15 of head 1's 156 (2v+1 over 12 tokens);
    # B: tokens 4 and 7 hold 1 + 9 of 51 and 3 + 19 of 115. Label tokens are 2/12 and 2/13 of positions.
    mass = am.label_mass(*tables_of(A, B))
    a = (12 / 72 + 26 / 156) / 2
    b = (10 / 51 + 22 / 115) / 2
    share = (2 / 12 + 2 / 13) / 2
    assert mass["layer"] == [0]
    assert mass["label_mass"][0] == pytest.approx((a + b) / 2)
    assert mass["label_share"][0] == pytest.approx(share)
    assert mass["ratio"][0] == pytest.approx((a + b) / 2 / share)


@pytest.mark.parametrize("n_cols", [1, 2, 7])
def test_resample_endpoints_preserved(n_cols):
    values = np.array([4.0, -1.0, 2.5, 9.0])
    out = am.resample(values, n_cols)
    assert out.shape == (n_cols,)
    assert out[0] == 4.0
    if n_cols > 1:
        assert out[-1] == 9.0
