"""Extraction on a tiny random llama: shard contents against independent forward passes."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from workflow_scripts import extract, models, schemas
from workflow_scripts.extract import ExtractionError


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    manifest = {"path": str(tiny_llama_dir), "revision": None, "trust_remote_code": False}
    return models.load_model(manifest, "cpu", "float32", attn_implementation="eager")


def prompt_table(n: int = 3) -> pa.Table:
    rng = np.random.default_rng(0)
    ids = [rng.integers(3, 40000, size=12 + 5 * i).tolist() for i in range(n)]
    return pa.table({"prompt_id": list(range(n)), "input_ids": ids, "label_token_ids": [[1000, 2000, 3000]] * n})


def test_shard_rows_match_independent_forward_passes(model):
    table = prompt_table()
    columns = extract.extract_shard(table, model, "cpu")
    for i, ids in enumerate(table.column("input_ids").to_pylist()):
        with torch.inference_mode():
            full = model(input_ids=torch.tensor([ids]), use_cache=False)
            eager = model(input_ids=torch.tensor([ids]), output_attentions=True, use_cache=False)
        logits = full.logits[0, -1, [1000, 2000, 3000]].numpy()
        np.testing.assert_allclose(columns["label_logits"][i], logits, rtol=1e-5, atol=1e-5)
        assert columns["prediction"][i] == int(np.argmax(logits))
        rows = np.stack([a[0, :, -1, :].numpy() for a in eager.attentions])
        stored = np.asarray(columns["attention"][i], dtype=np.float32).reshape(2, 4, len(ids))
        np.testing.assert_allclose(stored, rows, atol=1e-3)  # float16 storage
        np.testing.assert_allclose(stored.sum(-1), 1.0, atol=5e-3)
        assert (columns["n_tokens"][i], columns["n_layers"][i], columns["n_heads"][i]) == (len(ids), 2, 4)


def test_shard_file_round_trips_through_the_schema(model, tmp_path):
    columns = extract.extract_shard(prompt_table(2), model, "cpu")
    out = tmp_path / "000.parquet"
    schemas.write_table(columns, schemas.SHARD, out)
    table = schemas.read_table(out, schemas.SHARD)
    assert table.schema.field("attention").type == pa.list_(pa.float16())
    assert table.column("prompt_id").to_pylist() == [0, 1]
    assert [p.name for p in tmp_path.iterdir()] == ["000.parquet"]  # no temporary file left


def test_non_finite_attention_names_the_prompt_and_layer():
    attention = np.full((3, 2, 5), 0.2)
    attention[1, 1, 2] = np.nan
    with pytest.raises(ExtractionError, match="prompt 17: attention row of layer 1"):
        extract.check_finite(17, np.zeros(2), attention)
    with pytest.raises(ExtractionError, match="prompt 4: label logits"):
        extract.check_finite(4, np.array([0.0, np.inf]), np.full((3, 2, 5), 0.2))


def test_shard_bookkeeping():
    assert extract.n_shards(120, 40) == 3 and extract.n_shards(121, 40) == 4
    table = prompt_table(5)
    assert extract.shard_rows(table, 1, 2).column("prompt_id").to_pylist() == [2, 3]
    assert extract.shard_rows(table, 2, 2).column("prompt_id").to_pylist() == [4]


def test_cuda_requested_without_a_gpu_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ExtractionError, match="extraction.device"):
        extract.resolve_device("cuda", "auto")
    assert extract.resolve_device("auto", "auto") == ("cpu", "float32")
