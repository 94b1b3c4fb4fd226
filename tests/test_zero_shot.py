"""Each example alone through the model: P(o|x) and hidden states equal a plain forward of that text."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workflow_scripts.core import table_io, tables
from workflow_scripts.core.readers import read_zero_shot
from workflow_scripts.model import loading, zero_shot
from workflow_scripts.sources import models

from .test_prompts_tokenize import PROMPT_CFG, TASK, toy_data

CFG = {"threads": 1, "device": "cpu", "dtype": "float32", "zero_shot_batch_size": 4, "zero_shot_top_k": 8}


@pytest.fixture(scope="module")
def table(tiny_llama_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero_shot")
    manifest = tmp / "manifest.json"
    models.prepare_model("tiny", {"source": "local", "path": str(tiny_llama_dir)}, manifest, tmp / "cache")
    data = tmp / "toy.parquet"
    table_io.write_table(toy_data(), tables.TASK_DATA, data)
    out = tmp / "zero_shot.parquet"
    zero_shot.write_zero_shot(data, manifest, "toy", TASK, PROMPT_CFG, CFG, out)
    return rows_by_id(read_zero_shot(out)), out


def rows_by_id(frame) -> dict[str, dict]:
    """Example id -> its row, list columns as arrays and hidden as (layers, size): the test's own reading."""
    rows = {}
    for row in frame.iter_rows(named=True):
        row = {name: np.asarray(v) if isinstance(v, list) else v for name, v in row.items()}
        if "hidden" in row:
            row["hidden"] = row["hidden"].astype(np.float32).reshape(row["hidden_shape"])
        rows[row["example_id"]] = row
    return rows


def test_rows_cover_the_test_queries_and_the_pool(table):
    frame, path = table
    data = toy_data()
    parts = [row["part"] for row in frame.values()]
    assert parts.count("eval") == PROMPT_CFG["n_eval"]
    assert parts.count("pool") == len(data) - PROMPT_CFG["n_eval"] - PROMPT_CFG["n_dev"]
    assert read_zero_shot(path)["example_id"].is_unique().all()


def test_probabilities_and_hidden_states_equal_a_plain_forward(table, tiny_llama_dir, tokenizer):
    frame, _ = table
    model = loading.load_model({"path": str(tiny_llama_dir), "revision": None, "trust_remote_code": False}, "cpu", "float32", "eager")
    words = [tokenizer(" bad", add_special_tokens=False)["input_ids"][0], tokenizer(" good", add_special_tokens=False)["input_ids"][0]]
    texts = dict(toy_data().select("example_id", "text").iter_rows())
    last = {}
    hook = model.model.layers[-1].register_forward_hook(lambda _m, _a, out: last.update(h=out[0] if isinstance(out, tuple) else out))
    for example_id in list(frame)[::7]:
        text = TASK["template"]["prefix"] + TASK["template"]["input"].format(text=texts[example_id])
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model(input_ids=ids, output_hidden_states=True)
        expected = torch.softmax(out.logits[0, -1, words].double(), dim=-1).numpy()
        row = frame[example_id]
        np.testing.assert_allclose(row["probs"], expected, atol=1e-5)
        assert row["prediction"] == int(np.argmax(expected))
        assert row["hidden"].shape == (2, 32)
        np.testing.assert_allclose(row["hidden"][0], out.hidden_states[1][0, -1].numpy(), atol=2e-2, rtol=1e-2)  # float16
        np.testing.assert_allclose(row["hidden"][1], last["h"][0, -1].numpy(), atol=2e-2, rtol=1e-2)  # before the final norm
    hook.remove()


def test_reading_without_hidden_states_skips_them(table):
    _, path = table
    frame = read_zero_shot(path, hidden=False)
    assert "hidden" not in frame.columns and frame["probs"].list.len().to_list() == [2] * len(frame)


def test_the_next_token_top_k_is_stored_most_probable_first_with_the_rest_mass(table):
    _, path = table
    top = read_zero_shot(path, hidden=False, next_token=True)
    assert set(top["next_ids"].list.len()) == set(top["next_probs"].list.len()) == {8}
    for probs, rest in zip(map(np.asarray, top["next_probs"].to_list()), top["next_rest"]):
        assert (np.diff(probs) <= 0).all() and rest == pytest.approx(1 - probs.sum(), abs=1e-6)
    assert "next_ids" not in read_zero_shot(path).columns  # readers that do not ask for it do not load it


def test_an_old_zero_shot_table_serves_every_reader_but_the_next_token_one(table, tmp_path):
    import pyarrow.parquet as pq

    _, path = table
    old = tmp_path / "zero_shot.parquet"
    pq.write_table(pq.read_table(path).drop(["next_ids", "next_probs", "next_rest"]), old)
    assert len(read_zero_shot(old, hidden=False)) == len(read_zero_shot(path, hidden=False))
    with pytest.raises(table_io.TableError, match=r"zero_shot\.parquet: missing columns \['next_ids', 'next_probs', 'next_rest'\]") as err:
        read_zero_shot(old, next_token=True)
    assert "older version of the pipeline" in str(err.value) and f"--forcerun {old}" in str(err.value)
