"""Contextual calibration: each full prompt carries content-free twins (same demonstrations, the query
replaced), the extraction runs only their own tokens over the prompt's keys and values, and the
calibrated prediction divides by their label distribution: the same as running every twin in full."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from workflow_scripts.analysis import calibration, heldout
from workflow_scripts.core import stats, table_io, tables
from workflow_scripts.prompts import sets

from .test_prompts_tokenize import PROMPT_CFG, RANDOM, TASK, toy_data

TEXTS = ["N/A", ""]


def test_calibrated_prediction_divides_by_the_content_free_distribution():
    logits = np.log(np.array([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]]))
    content_free = np.array([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]])
    # By hand: .7/.9 < .3/.1 -> 1; .6/.5 > .4/.5 -> 0; .2/.1 > .8/.9 -> 0.
    assert calibration.calibrate(logits, content_free).tolist() == [1, 0, 0]


@pytest.fixture(scope="module")
def built(tokenizer) -> dict:
    return sets.build_prompts(toy_data(), TASK, PROMPT_CFG, RANDOM, 7, tokenizer, "toy", content_free=TEXTS)


def twin(built: dict, i: int, n: int) -> list[int]:
    return built["input_ids"][i][: built["content_free_start"][i][n]] + built["content_free_ids"][i][n]


def test_content_free_twins_are_the_prompt_with_only_the_query_replaced(built, tokenizer):
    plain = sets.build_prompts(toy_data(), TASK, PROMPT_CFG, RANDOM, 7, tokenizer, "toy")
    for key in ("prompt_id", "demo_ids", "input_ids", "text"):
        assert plain[key] == built[key], key  # the twins change nothing of the prompts themselves
    assert plain["content_free"] == [None] * len(plain["prompt_id"])
    texts = dict(zip(toy_data()["example_id"], toy_data()["text"]))
    template = TASK["template"]["input"]
    for i, text in enumerate(built["text"]):
        query = template.format(text=texts[built["example_id"][i]])
        assert text.endswith(query) and built["content_free"][i] == TEXTS
        for n, free in enumerate(TEXTS):
            # Independently: the whole content-free prompt's text tokenized in one piece.
            expected = tokenizer(text[: len(text) - len(query)] + template.format(text=free))["input_ids"]
            assert twin(built, i, n) == expected
            start = built["content_free_start"][i][n]
            assert built["query_start"][i] <= start < len(expected)  # the demonstrations are shared
            assert built["input_ids"][i][:start] == expected[:start]


def test_content_free_twins_are_built_only_where_asked(tokenizer):
    none = sets.build_prompts(toy_data(), TASK, PROMPT_CFG, RANDOM, 7, tokenizer, "toy", content_free=[])
    assert none["content_free_start"] == [None] * len(none["prompt_id"])


def test_shared_prefix_leaves_the_twin_a_token_of_its_own():
    assert sets.shared_prefix([1, 2, 3, 4], [1, 2, 9]) == 2
    assert sets.shared_prefix([1, 2, 3, 4], [1, 2, 3]) == 2  # a twin that is a prefix of the prompt
    assert sets.shared_prefix([5], [1, 2]) == 0


def prompts_table(built: dict) -> pa.Table:
    return pa.Table.from_pydict({name: built[name] for name in tables.PROMPTS.names}, schema=tables.PROMPTS)


def test_calibration_from_the_extracted_continuations_equals_running_every_twin_in_full(built, tiny_llama_dir):
    """The issue's check: the shard's content-free logits (prefix reused) against the full forward of
    every content-free prompt (the calibration as it ran before) and the eager oracle."""
    from workflow_scripts.model import engine, extract, loading

    manifest = {"path": str(tiny_llama_dir), "revision": None, "trust_remote_code": False}
    model = engine.prepare(loading.load_model(manifest, "cpu", "float32", attn_implementation="sdpa"))
    eager = loading.load_model(manifest, "cpu", "float32", attn_implementation="eager")
    cfg = {"batch_size": 3, "kv_layers": [], "kv_max_prompts": 0, "hidden_layers": [], "hidden_positions": ["last"],
           "head_outputs": False}
    shard = pa.Table.from_pydict(extract.extract_shard(prompts_table(built), model, cfg), schema=tables.SHARD)
    n = len(built["prompt_id"])
    full = engine.run(model, [engine.Request(twin(built, i, t), built["label_token_ids"][i]) for i in range(n) for t in range(2)], 3)
    full_logits = np.stack([r["label_logits"] for r in full]).reshape(n, 2, 2)
    reused = np.asarray(shard.column("content_free_logits").to_pylist()).reshape(n, 2, 2)
    np.testing.assert_allclose(reused, full_logits, atol=1e-5)
    for i in (0, 4):
        oracle = extract.eager_outputs(eager, twin(built, i, 1), built["label_token_ids"][i])[0]
        np.testing.assert_allclose(reused[i, 1], oracle, atol=1e-5)
    ids = list(range(n))
    columns = calibration.calibration_columns(ids, shard, [0, 1], 2, "shard")
    before = np.mean(stats.softmax(full_logits.astype(np.float64)), axis=1)
    icl = np.asarray(shard.column("label_logits").to_pylist())
    assert columns["calibrated_prediction"] == calibration.calibrate(icl, before).tolist()
    np.testing.assert_allclose(columns["content_free_probs"], before, atol=1e-5)
    only_free = calibration.calibration_columns(ids, shard, [1], 2, "shard")  # one of the two, by position
    np.testing.assert_allclose(only_free["content_free_probs"], stats.softmax(full_logits[:, 1].astype(np.float64)), atol=1e-5)


def test_calibration_columns_read_the_shards_label_logits(tmp_path):
    shards = pa.table({"prompt_id": [2, 0, 1], "label_logits": [[0.0, 1.0], [2.0, 0.0], [0.1, 0.0]],
                       "content_free_logits": [[0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 9.0, 9.0], [np.log(9.0), 0.0, 0.0, 0.0]]})
    columns = calibration.calibration_columns([0, 1, 2], shards, [0], 2, "shards")
    # content-free probs of query 0: prompt 0 (.5, .5), 1 (.9, .1), 2 (.5, .5)
    np.testing.assert_allclose(columns["content_free_probs"], [[0.5, 0.5], [0.9, 0.1], [0.5, 0.5]], atol=1e-6)
    assert columns["icl_prediction"] == [0, 0, 1]
    assert columns["calibrated_prediction"] == [0, 1, 1]  # prompt 1: .52/.9 < .48/.1
    table_io.write_table(columns, tables.CALIBRATION, tmp_path / "calibration.parquet")
    assert table_io.read_table(tmp_path / "calibration.parquet", tables.CALIBRATION).num_rows == 3
    with pytest.raises(calibration.CalibrationError, match="re-run extract_shard"):
        calibration.calibration_columns([0, 5], shards, [0], 2, "shards")
    stale = shards.set_column(3, "content_free_logits", pa.array([None, None, None], pa.list_(pa.float32())))
    with pytest.raises(calibration.CalibrationError, match="shards: .*re-run extract_shard"):
        calibration.calibration_columns([0, 1], stale, [0], 2, "shards")


def test_a_content_free_query_the_prompts_lack_is_refused_with_the_rule_to_rerun():
    assert calibration.text_indices(["N/A", ""], ["", "N/A"], "p") == [1, 0]
    with pytest.raises(calibration.CalibrationError, match=r"p holds content-free queries \['N/A'\].*\['\[MASK\]'\].*re-run build_prompts"):
        calibration.text_indices(["N/A"], ["[MASK]"], "p")
    with pytest.raises(calibration.CalibrationError, match="re-run build_prompts"):
        calibration.text_indices(None, ["N/A"], "p")


def test_heldout_reads_the_calibrated_prediction_of_each_prompt(tmp_path):
    path = tmp_path / "calibration.parquet"
    table_io.write_table({"prompt_id": [3, 1, 2], "content_free_probs": [[0.5, 0.5]] * 3, "icl_prediction": [0, 0, 0],
                         "calibrated_prediction": [1, 0, 1]}, tables.CALIBRATION, path)
    name, predictions = heldout.calibrated_predictions(path, np.array([0, 1, 2, 3]), ["N/A"])
    assert name == "content-free 'N/A'" and predictions == {3: 1, 1: 0, 2: 1}  # prompt 0: not held out
    with pytest.raises(heldout.HeldoutError, match="re-run calibrate"):
        heldout.calibrated_predictions(path, np.array([1, 2, 4]), ["N/A"])
