"""Prompt tokenization with SmolLM2's real BPE tokenizer: recorded positions point at the right tokens."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from workflow_scripts.core import table_io, tables
from workflow_scripts.core.config import setting_defaults
from workflow_scripts.prompts import sets
from workflow_scripts.prompts.text import PromptError
from workflow_scripts.sources import manifests, tokenizers

from .conftest import toy_sentiment_rows

TEMPLATE = {"prefix": "Classify.\n\n", "input": "Review: {text}\nSentiment:", "output": " {label}", "separator": "\n\n"}
TASK = {
    "classes": ["negative", "positive"],
    "label_words": {"negative": "bad", "positive": "good"},
    "template": TEMPLATE,
}
RANDOM = setting_defaults({"selection": "random"})
PROMPT_CFG = {"n_eval": 10, "n_dev": 4, "k": 6, "split_seed": 3, "max_chars": 0, "pool_size": 0, "prepend_bos": False}


def toy_data() -> pl.DataFrame:
    rows = toy_sentiment_rows()
    return pl.DataFrame(
        {
            "example_id": [f"toy-{i}" for i in range(len(rows))],
            "text": [r["text"] for r in rows],
            "text_b": [None] * len(rows),
            "label": [int(r["label"] == "pos") for r in rows],
            "label_name": ["positive" if r["label"] == "pos" else "negative" for r in rows],
        },
        schema_overrides={"text_b": pl.String, "label": pl.Int32},
    )


@pytest.fixture(scope="module")
def built(tokenizer) -> dict:
    return sets.build_prompts(toy_data(), TASK, PROMPT_CFG, RANDOM, 7, tokenizer, "toy")


def test_every_label_position_decodes_to_that_demos_label_word(built, tokenizer):
    words = ["bad", "good"]
    for ids, y_pos, labels in zip(built["input_ids"], built["y_pos"], built["demo_labels"]):
        assert len(y_pos) == PROMPT_CFG["k"]
        for pos, label in zip(y_pos, labels):
            assert tokenizer.decode([ids[pos]]).strip() == words[label]


def test_spans_decode_to_the_demonstration_and_query_inputs(built, tokenizer):
    texts = dict(toy_data().select("example_id", "text").iter_rows())
    for i in range(len(built["prompt_id"])):
        ids = built["input_ids"][i]
        for demo_id, start, end in zip(built["demo_ids"][i], built["x_start"][i], built["x_end"][i]):
            text = tokenizer.decode(ids[start:end])
            assert text.strip() == TEMPLATE["input"].format(text=texts[demo_id]).strip()
        query = tokenizer.decode(ids[built["query_start"][i] : built["query_end"][i]])
        assert query.strip() == TEMPLATE["input"].format(text=texts[built["example_id"][i]]).strip()
        assert built["query_end"][i] == len(ids)
        assert tokenizer.decode(ids) == built["text"][i]


def test_demonstrations_come_from_the_pool_and_never_include_the_query(built):
    queries = set(built["example_id"])
    for example_id, demos in zip(built["example_id"], built["demo_ids"]):
        assert example_id not in demos and not queries & set(demos)
        assert len(set(demos)) == len(demos)
    assert np.bincount(built["label"]).tolist() == [5, 5]


def test_label_token_ids_are_the_tokens_the_model_should_predict(built, tokenizer):
    ids = built["label_token_ids"][0]
    assert [tokenizer.decode([i]).strip() for i in ids] == ["bad", "good"]
    # The query ends right where a label word would follow: " good" is then one token, that id.
    text = built["text"][0] + " good"
    assert tokenizer(text)["input_ids"][-1] == ids[1]


def test_a_multi_token_label_word_is_rejected_with_its_tokens(tokenizer):
    task = {**TASK, "label_words": {"negative": "bad", "positive": "superlativeness"}}
    with pytest.raises(PromptError, match="'superlativeness' is not one token in context"):
        sets.build_prompts(toy_data(), task, PROMPT_CFG, RANDOM, 7, tokenizer, "toy")


def test_k_larger_than_the_pool_is_rejected(tokenizer):
    cfg = {**PROMPT_CFG, "k": 100}
    with pytest.raises(PromptError, match="prompts.k=100 is larger than the demonstration pool"):
        sets.build_prompts(toy_data(), TASK, cfg, RANDOM, 7, tokenizer, "toy")
    with pytest.raises(PromptError, match="the setting's k=100 is larger than the demonstration pool"):
        sets.build_prompts(toy_data(), TASK, PROMPT_CFG, {**RANDOM, "k": 100}, 7, tokenizer, "toy")


def test_same_seed_same_bytes_other_seed_other_demos(tokenizer, tmp_path):
    paths = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        columns = sets.build_prompts(toy_data(), TASK, PROMPT_CFG, RANDOM, seed, tokenizer, "toy")
        table_io.write_table(columns, tables.PROMPTS, tmp_path / f"{name}.parquet")
        paths.append(tmp_path / f"{name}.parquet")
    assert paths[0].read_bytes() == paths[1].read_bytes()
    a = table_io.read_table(paths[0], tables.PROMPTS).column("demo_ids").to_pylist()
    c = table_io.read_table(paths[2], tables.PROMPTS).column("demo_ids").to_pylist()
    assert a != c


def test_the_manifest_tokenizer_builds_the_same_prompts_as_transformers(tokenizer, tiny_llama_dir, tmp_path):
    from workflow_scripts.sources import models

    manifest = tmp_path / "manifest.json"
    models.prepare_model("tiny", {"source": "local", "path": str(tiny_llama_dir)}, manifest, tmp_path / "cache")
    saved = manifests.read_manifest(manifest)
    assert saved["tokenizer"] == str((tmp_path / "tokenizer.json").resolve())
    light = tokenizers.load_tokenizer(saved)
    settings = [RANDOM, setting_defaults({"selection": "random", "labels": "symbols", "typo_rate": 0.2})]
    for setting in settings:
        ours = sets.build_prompts(toy_data(), TASK, PROMPT_CFG, setting, 7, light, "toy")
        theirs = sets.build_prompts(toy_data(), TASK, PROMPT_CFG, setting, 7, tokenizer, "toy")
        assert ours == theirs
    text = "Review: naïve, isn't it?\nSentiment: good"
    assert light(text, return_offsets_mapping=True)["offset_mapping"] == list(
        map(tuple, tokenizer(text, return_offsets_mapping=True)["offset_mapping"]))
    # An old manifest, without the saved tokenizer, falls back to transformers' with the same encoding.
    old = {k: v for k, v in saved.items() if k != "tokenizer"}
    assert tokenizers.load_tokenizer(old)(text)["input_ids"] == light(text)["input_ids"]


@pytest.fixture(scope="module")
def saved_manifest(tiny_llama_dir, tmp_path_factory) -> dict:
    from workflow_scripts.sources import models

    folder = tmp_path_factory.mktemp("tiny_manifest")
    models.prepare_model("tiny", {"source": "local", "path": str(tiny_llama_dir)}, folder / "manifest.json", folder / "cache")
    return manifests.read_manifest(folder / "manifest.json")


def test_prepend_bos_shifts_every_position_by_the_bos_token(saved_manifest, tiny_llama_dir):
    import json


    bos = json.loads((tiny_llama_dir / "tokenizer_config.json").read_text())["bos_token"]
    plain = sets.build_prompts(toy_data(), TASK, PROMPT_CFG, RANDOM, 7, tokenizers.load_tokenizer(saved_manifest), "toy")
    with_bos = tokenizers.load_tokenizer(saved_manifest, prepend_bos=True)
    bos_id = with_bos.backend.token_to_id(bos)
    built = sets.build_prompts(toy_data(), TASK, PROMPT_CFG, RANDOM, 7, with_bos, "toy")
    assert built["demo_ids"] == plain["demo_ids"]
    for i in range(len(built["input_ids"])):
        assert built["input_ids"][i] == [bos_id, *plain["input_ids"][i]]
        for span in ("x_start", "x_end", "y_pos"):
            assert built[span][i] == [p + 1 for p in plain[span][i]]
        assert (built["query_start"][i], built["query_end"][i]) == (plain["query_start"][i] + 1, plain["query_end"][i] + 1)


def test_prepend_bos_never_doubles_a_bos_the_tokenizer_adds(saved_manifest):
    from tokenizers.processors import TemplateProcessing


    tokenizer = tokenizers.load_tokenizer(saved_manifest, prepend_bos=True)
    bos_id = tokenizer.bos_id
    bos = tokenizer.backend.id_to_token(bos_id)
    tokenizer.backend.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bos_id)])
    ids = tokenizer("Review: fine\nSentiment:", return_offsets_mapping=True)
    assert ids["input_ids"].count(bos_id) == 1 and ids["input_ids"][0] == bos_id
    # add_special_tokens=False is the raw text, as for the label-word checks.
    assert bos_id not in tokenizer("Review: fine", add_special_tokens=False)["input_ids"]


def test_a_model_without_bos_keeps_its_prompts_and_says_so(saved_manifest, tmp_path, caplog):

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    manifest = {**saved_manifest, "path": str(bare)}
    assert tokenizers.bos_token(bare) is None
    with caplog.at_level("WARNING"):
        tokenizer = tokenizers.load_tokenizer(manifest, prepend_bos=True)
    assert tokenizer.bos_id is None and "prompts.prepend_bos" in caplog.text
    plain = tokenizers.load_tokenizer(saved_manifest)
    assert tokenizer("a b c")["input_ids"] == plain("a b c")["input_ids"]
