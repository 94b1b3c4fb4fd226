"""Contextual calibration: the content-free prompts are the prompt set's with only the query replaced,
their label distribution is the model's, and the calibrated prediction divides by it."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from workflow_scripts.analysis import heldout
from workflow_scripts.core import table_io, tables
from workflow_scripts.model import calibration, loading
from workflow_scripts.prompts import sets

from .test_prompts_tokenize import PROMPT_CFG, RANDOM, TASK, toy_data


def test_calibrated_prediction_divides_by_the_content_free_distribution():
    logits = np.log(np.array([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]]))
    content_free = np.array([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]])
    # By hand: .7/.9 < .3/.1 -> 1; .6/.5 > .4/.5 -> 0; .2/.1 > .8/.9 -> 0.
    assert calibration.calibrate(logits, content_free).tolist() == [1, 0, 0]


@pytest.fixture(scope="module")
def both(tokenizer) -> tuple[dict, dict]:
    built = sets.build_prompts(toy_data(), TASK, PROMPT_CFG, RANDOM, 7, tokenizer, "toy")
    free = sets.build_prompts(toy_data(), TASK, PROMPT_CFG, RANDOM, 7, tokenizer, "toy", content_free="N/A")
    return built, free


def test_content_free_prompts_keep_the_demonstrations_and_replace_the_query(both, tokenizer):
    built, free = both
    for key in ("prompt_id", "example_id", "demo_ids", "demo_labels", "x_start", "y_pos", "query_start", "label_token_ids"):
        assert free[key] == built[key], key
    for i in range(len(built["text"])):
        start = built["query_start"][i]
        assert free["input_ids"][i][:start] == built["input_ids"][i][:start]
        assert tokenizer.decode(free["input_ids"][i][start:]) == TASK["template"]["input"].format(text="N/A")
    calibration.check_same_prompts(pa.table({k: built[k] for k in ("prompt_id", "demo_ids", "demo_labels")}), free, "N/A")


def test_prompts_with_other_demonstrations_are_refused(both):
    built, free = both
    stale = pa.table({"prompt_id": built["prompt_id"], "demo_ids": built["demo_ids"][::-1], "demo_labels": built["demo_labels"]})
    with pytest.raises(calibration.CalibrationError, match="re-run build_prompts"):
        calibration.check_same_prompts(stale, free, "N/A")


def test_content_free_probs_are_the_models_label_softmax_averaged_over_inputs(tiny_llama_dir, tokenizer):
    import torch

    from workflow_scripts.model import engine, extract

    manifest = {"path": str(tiny_llama_dir), "revision": None, "trust_remote_code": False}
    model = engine.prepare(loading.load_model(manifest, "cpu", "float32", attn_implementation="sdpa"))
    eager = loading.load_model(manifest, "cpu", "float32", attn_implementation="eager")
    free_sets = [sets.build_prompts(toy_data(), TASK, PROMPT_CFG, RANDOM, 7, tokenizer, "toy", content_free=text)
            for text in ("N/A", "")]
    rows = np.array([0, 2, 3, 5])
    got = calibration.content_free_probs(model, free_sets, rows, batch_size=3)
    assert got.shape == (4, 2)
    for n, i in enumerate(rows):
        expected = np.mean([
            torch.softmax(torch.from_numpy(extract.eager_outputs(eager, s["input_ids"][i], s["label_token_ids"][i])[0]).double(), -1).numpy()
            for s in free_sets
        ], axis=0)
        np.testing.assert_allclose(got[n], expected, atol=1e-5)


def test_calibration_columns_read_the_shards_label_logits(tmp_path):
    shards = pa.table({"prompt_id": [2, 0, 1], "label_logits": [[0.0, 1.0], [2.0, 0.0], [0.1, 0.0]]})
    cf = np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1]])
    columns = calibration.calibration_columns([0, 1, 2], shards, cf)
    assert columns["icl_prediction"] == [0, 0, 1]
    assert columns["calibrated_prediction"] == [0, 0, 1]
    table_io.write_table(columns, tables.CALIBRATION, tmp_path / "calibration.parquet")
    assert table_io.read_table(tmp_path / "calibration.parquet", tables.CALIBRATION).num_rows == 3
    with pytest.raises(calibration.CalibrationError, match="re-run extract_shard"):
        calibration.calibration_columns([0, 5], shards, cf[:2])


def test_heldout_reads_the_calibrated_prediction_of_each_prompt(tmp_path):
    path = tmp_path / "calibration.parquet"
    table_io.write_table({"prompt_id": [3, 1, 2], "content_free_probs": [[0.5, 0.5]] * 3, "icl_prediction": [0, 0, 0],
                         "calibrated_prediction": [1, 0, 1]}, tables.CALIBRATION, path)
    name, predictions = heldout.calibrated_predictions(path, np.array([0, 1, 2, 3]), ["N/A"])
    assert name == "content-free 'N/A'" and predictions == {3: 1, 1: 0, 2: 1}  # prompt 0: not held out
    with pytest.raises(heldout.HeldoutError, match="re-run calibrate"):
        heldout.calibrated_predictions(path, np.array([1, 2, 4]), ["N/A"])


def test_only_table_2s_held_out_prompts_are_calibrated(both):
    built, _ = both
    from workflow_scripts.core.split import select_heldout

    labels = np.array(built["label"])
    shuffled = np.random.default_rng(0).permutation(len(labels))  # a table in another row order
    stored = pa.table({"prompt_id": np.array(built["prompt_id"])[shuffled], "label": labels[shuffled]})
    rows = calibration.heldout_positions(stored, 4, 4, seed=3)
    _, held = select_heldout(labels, 4, 4, 3)
    assert sorted(stored.column("prompt_id").to_numpy()[rows]) == sorted(np.array(built["prompt_id"])[held])
