"""Extraction on a tiny random llama: shard contents against the eager oracle and the schema."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from workflow_scripts.core import paths, table_io, tables
from workflow_scripts.core.layers import LayerError
from workflow_scripts.model import engine, extract, loading
from workflow_scripts.model.extract import ExtractionError

CFG = {"batch_size": 2, "kv_layers": [], "kv_max_prompts": 200, "hidden_layers": [], "hidden_positions": ["last"],
       "head_outputs": False}


def load(tiny_llama_dir, attn: str):
    manifest = {"path": str(tiny_llama_dir), "revision": None, "trust_remote_code": False}
    return loading.load_model(manifest, "cpu", "float32", attn_implementation=attn)


@pytest.fixture(scope="module")
def oracle_model(tiny_llama_dir):
    return load(tiny_llama_dir, "eager")


@pytest.fixture(scope="module")
def engine_model(tiny_llama_dir):
    return engine.prepare(load(tiny_llama_dir, "sdpa"))


def prompt_table(n: int = 3) -> pa.Table:
    rng = np.random.default_rng(0)
    ids = [rng.integers(3, 40000, size=20 + 5 * i).tolist() for i in range(n)]
    return pa.table({
        "prompt_id": list(range(n)), "input_ids": ids, "label_token_ids": [[1000, 2000, 3000]] * n,
        "x_start": [[1, 7]] * n, "y_pos": [[5, 11]] * n, "query_start": [14] * n,
        "content_free_start": pa.nulls(n, pa.list_(pa.int32())), "content_free_ids": pa.nulls(n, pa.list_(pa.list_(pa.int32()))),
    })


def test_shard_rows_match_the_eager_oracle(engine_model, oracle_model):
    table = prompt_table()
    columns = extract.extract_shard(table, engine_model, CFG)
    for i, ids in enumerate(table.column("input_ids").to_pylist()):
        logits, rows = extract.eager_outputs(oracle_model, ids, [1000, 2000, 3000])
        np.testing.assert_allclose(columns["label_logits"][i], logits, rtol=1e-5, atol=1e-5)
        assert columns["prediction"][i] == int(np.argmax(logits))
        stored = np.asarray(columns["attention"][i], dtype=np.float32).reshape(2, 4, len(ids))
        np.testing.assert_allclose(stored, rows, atol=1e-3)  # float16 storage
        np.testing.assert_allclose(stored.sum(-1), 1.0, atol=5e-3)
        assert (columns["n_tokens"][i], columns["n_layers"][i], columns["n_heads"][i]) == (len(ids), 2, 4)
        assert columns["keys"][i] is None and columns["hidden"][i] is None and columns["head_outputs"][i] is None


def test_keys_values_and_hidden_states_round_trip_through_the_schema(engine_model, tmp_path):
    cfg = {**CFG, "kv_layers": [1], "kv_max_prompts": 2, "hidden_layers": [0, 1], "hidden_positions": ["last", "labels"],
           "head_outputs": True}
    table = prompt_table(3)
    out = tmp_path / "000.parquet"
    table_io.write_table(extract.extract_shard(table, engine_model, cfg), tables.SHARD, out)
    shard = table_io.read_table(out, tables.SHARD).to_pylist()
    assert [p.name for p in tmp_path.iterdir()] == ["000.parquet"]  # no temporary file left
    first, third = shard[0], shard[2]
    assert first["kv_layers"] == [1] and first["kv_positions"] == [4, 5, 6, 7, 8, 10, 11, 12, 13, 14]
    assert first["kv_shape"] == [1, 2, 10, 8] and len(first["keys"]) == 1 * 2 * 10 * 8
    assert first["top_shape"] == [1, 4, 2, 5, 8]
    top = np.asarray(first["top_positions"]).reshape(1, 4, 2)
    assert ((top[..., 0] >= 1) & (top[..., 0] <= 5)).all() and ((top[..., 1] >= 7) & (top[..., 1] <= 11)).all()
    assert third["keys"] is None and third["kv_shape"] is None  # beyond kv_max_prompts
    assert first["hidden_shape"] == [2, 3, 32] and first["hidden_positions"] == [19, 5, 11]
    # hidden state of layer 0 at the last token equals the decoder layer's own output
    with torch.inference_mode():
        states = engine_model(input_ids=torch.tensor([table.column("input_ids")[0].as_py()]), output_hidden_states=True).hidden_states
    hidden = np.asarray(first["hidden"], dtype=np.float32).reshape(2, 3, 32)
    np.testing.assert_allclose(hidden[0, 0], states[1][0, -1].numpy(), atol=2e-2, rtol=1e-2)
    # every head's output at the last position, kept for every prompt (the causal check's mean ablation)
    assert all(len(row["head_outputs"]) == 2 * 4 * 8 for row in shard)


def test_prompt_longer_than_the_context_names_the_prompt(engine_model):
    table = prompt_table(1)
    long = pa.table({**{n: table.column(n) for n in table.column_names}, "input_ids": [list(range(3, 3000))]})
    with pytest.raises(ExtractionError, match="results/x/prompts.parquet: prompt 0 has 2997 tokens, more than the model's context of 2048"):
        extract.extract_shard(long, engine_model, CFG, "results/x/prompts.parquet")


def test_layers_beyond_the_model_are_a_config_error():
    with pytest.raises(LayerError, match=r"extraction.kv_layers': layer 5 does not exist \(the model has 2\)"):
        extract.with_layers_resolved({**CFG, "kv_layers": [0, 5]}, 2)


def test_layers_relative_to_depth_resolve_per_model():
    cfg = {**CFG, "kv_layers": [0.0, 0.5, 1.0, -1], "hidden_layers": [-2]}
    assert extract.with_layers_resolved(cfg, 30) == {**cfg, "kv_layers": [0, 15, 29], "hidden_layers": [28]}
    assert extract.with_layers_resolved(cfg, 18)["kv_layers"] == [0, 9, 17]


def test_non_finite_attention_names_the_prompt_and_layer():
    attention = np.full((3, 2, 5), 0.2)
    attention[1, 1, 2] = np.nan
    with pytest.raises(ExtractionError, match="prompt 17: attention row of layer 1"):
        extract.check_finite(17, np.zeros(2), attention)
    with pytest.raises(ExtractionError, match="prompt 4: label logits"):
        extract.check_finite(4, np.array([0.0, np.inf]), np.full((3, 2, 5), 0.2))


def test_shard_bookkeeping():
    assert paths.shard_ids(120, 40) == ["000", "001", "002"] and len(paths.shard_ids(121, 40)) == 4
    table = prompt_table(5)
    assert extract.shard_rows(table, 1, 2).column("prompt_id").to_pylist() == [2, 3]
    assert extract.shard_rows(table, 2, 2).column("prompt_id").to_pylist() == [4]


def test_cuda_requested_without_a_gpu_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ExtractionError, match="extraction.device"):
        loading.resolve_device("cuda", "auto")
    assert loading.resolve_device("auto", "auto") == ("cpu", "float32")


def test_same_inputs_give_identical_shard_bytes(engine_model, tmp_path):
    cfg = {**CFG, "kv_layers": [0], "hidden_layers": [1]}
    for name in ("a", "b"):
        table_io.write_table(extract.extract_shard(prompt_table(3), engine_model, cfg), tables.SHARD, tmp_path / f"{name}.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
