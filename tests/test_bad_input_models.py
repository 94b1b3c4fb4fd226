"""Bad inputs around the studied model and the sentence encoder (issue 24): each stops early with an
error naming the config key or file and what was expected, or is handled.

  - an encoder-only (or encoder-decoder) model as the studied model
  - a model folder holding only config.json
  - a finished study moved to another folder (its manifests' paths)
  - a sentence encoder with fewer positions than the truncation length
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest

from workflow_scripts.core import config as config_module
from workflow_scripts.core import model_check, paths
from workflow_scripts.model import embedding
from workflow_scripts.sources import manifests, models, tokenizers

from .conftest import toy_sentiment_rows


def write_model_config(folder: Path, body: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(body))
    return folder


# ---------------------------------------------------------------- 1. the studied model is a causal LM

# config.json as real checkpoints on the hub have them (the fields that matter here).
DECODERS = {
    "llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
    "gpt2": {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
    "gptj": {"model_type": "gptj", "architectures": ["GPTJForCausalLM"]},
    "gpt_neox": {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]},
    "mistral": {"model_type": "mistral", "architectures": ["MistralForCausalLM"]},
    "qwen2": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]},
    "gemma3_text": {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"]},
    # Gemma 3 4B and up: a decoder with an image tower, which AutoModelForCausalLM loads.
    "gemma3": {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"]},
    # A config saved without architectures (e.g. LlamaConfig().save_pretrained).
    "llama, no architectures": {"model_type": "llama"},
    # Remote code that says how AutoModelForCausalLM loads it, whatever its class is called.
    "remote code": {"model_type": "chatglm", "architectures": ["ChatGLMModel"],
                    "auto_map": {"AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"}},
}

NOT_DECODERS = {
    "bert masked LM": ({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, "an encoder-only model"),
    "bert, no architectures": ({"model_type": "bert"}, "an encoder-only model"),
    # BertLMHeadModel's name looks causal; it is still a bidirectional encoder family.
    "bert LM head": ({"model_type": "bert", "architectures": ["BertLMHeadModel"], "is_decoder": True}, "an encoder-only model"),
    "roberta": ({"model_type": "roberta", "architectures": ["RobertaForMaskedLM"]}, "an encoder-only model"),
    "t5": ({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "is_encoder_decoder": True}, "an encoder-decoder model"),
    "bart": ({"model_type": "bart", "architectures": ["BartForConditionalGeneration"], "is_encoder_decoder": True}, "an encoder-decoder model"),
    "t5 without the flag": ({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}, "an encoder-decoder model"),
    # A decoder's body without its LM head: AutoModelForCausalLM would add a random one.
    "mistral body only": ({"model_type": "mistral", "architectures": ["MistralModel"]}, "a model without a causal language-model head"),
    "llama classifier": ({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]}, "a model without a causal language-model head"),
}


@pytest.mark.parametrize("body", DECODERS.values(), ids=list(DECODERS))
def test_decoder_configs_are_causal_language_models(body):
    assert model_check.causal_lm_problem(body) is None


@pytest.mark.parametrize(("body", "kind"), NOT_DECODERS.values(), ids=list(NOT_DECODERS))
def test_encoder_and_encoder_decoder_configs_are_refused(body, kind):
    problem = model_check.causal_lm_problem(body)
    assert problem is not None and problem.startswith(kind) and repr(body["model_type"]) in problem


def save_tiny_bert_masked_lm(folder: Path, tokenizer_from: Path) -> Path:
    """A random-weight BertForMaskedLM saved as a complete model folder (weights and tokenizer)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_masked_lm_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    return save_tiny_bert_masked_lm(tmp_path_factory.mktemp("bert_mlm"), tiny_bert_dir)


ENCODER_MESSAGE = "a causal (decoder-only) language model is expected"


def test_prepare_model_refuses_an_encoder_only_model(bert_masked_lm_dir, tmp_path):
    manifest = tmp_path / paths.model_manifest("bert")
    with pytest.raises(manifests.ModelError) as caught:
        models.prepare_model("bert", {"source": "local", "path": str(bert_masked_lm_dir)}, manifest, tmp_path / "cache")
    message = str(caught.value)
    assert message.startswith("config key 'models.bert.path'") and str(bert_masked_lm_dir) in message
    assert "model_type 'bert'" in message and "BertForMaskedLM" in message and ENCODER_MESSAGE in message
    assert not manifest.exists()


def tiny_study_config(model_path: str, data_path: str, encoder_path: str) -> dict:
    from .test_workflow import tiny_config

    config = tiny_config(Path(model_path), Path(data_path), Path(encoder_path))
    # One setting is enough to reach every stage that loads the model; keep the run short.
    config["study"]["settings"] = ["random"]
    config["settings"] = {"random": {"selection": "random"}}
    config["ablations"] = {}
    config["analysis"]["query_swap_setting"] = None
    return config


def test_config_validation_refuses_an_encoder_only_model(bert_masked_lm_dir, tiny_bert_dir, tmp_path):
    config = tiny_study_config(str(bert_masked_lm_dir), str(tmp_path / "toy.csv"), str(tiny_bert_dir))
    with pytest.raises(config_module.ConfigError) as caught:
        config_module.validate_config(config)
    message = str(caught.value)
    assert f"config key 'models.tiny.path': {str(bert_masked_lm_dir)!r}" in message
    assert "BertForMaskedLM" in message and ENCODER_MESSAGE in message


def test_snakemake_stops_at_parse_time_on_an_encoder_only_model(bert_masked_lm_dir, tiny_bert_dir, tmp_path):
    from .test_workflow import snakemake, write_config

    pl.DataFrame(toy_sentiment_rows()).write_csv(tmp_path / "toy.csv")
    write_config(tmp_path, tiny_study_config(str(bert_masked_lm_dir), "toy.csv", str(tiny_bert_dir)))
    done = snakemake(tmp_path, "--dry-run")
    assert done.returncode != 0
    assert "config key 'models.tiny.path'" in done.stdout + done.stderr and ENCODER_MESSAGE in done.stdout + done.stderr
    assert not (tmp_path / "resources").exists()


# ---------------------------------------------------------------- 2. a model folder with only config.json

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}


@pytest.mark.parametrize(
    ("files", "missing"),
    [
        ([], ["tokenizer files", "weights"]),
        (["model.safetensors"], ["tokenizer files"]),
        (["tokenizer.json", "tokenizer_config.json"], ["weights"]),
        (["vocab.json", "merges.txt", "pytorch_model.bin"], []),
        (["tokenizer.model", "model-00001-of-00002.safetensors"], []),
    ],
    ids=["config only", "no tokenizer", "no weights", "gpt2 style", "sentencepiece, sharded"],
)
def test_missing_files_of_a_model_folder(tmp_path, files, missing):
    folder = write_model_config(tmp_path / "model", LLAMA)
    for name in files:
        (folder / name).write_text("")
    assert [what.split(" (")[0] for what in model_check.missing_files(folder)] == missing


def test_prepare_model_names_what_a_config_only_folder_lacks(tmp_path):
    folder = write_model_config(tmp_path / "bare", LLAMA)
    with pytest.raises(manifests.ModelError) as caught:
        models.prepare_model("bare", {"source": "local", "path": str(folder)}, tmp_path / "manifest.json", tmp_path / "cache")
    message = str(caught.value)
    assert message.startswith(f"config key 'models.bare.path': {str(folder)!r} holds config.json but no tokenizer files")
    assert "and no weights (*.safetensors or *.bin)" in message and "save_pretrained" in message


def test_config_validation_names_what_a_config_only_folder_lacks(tmp_path, tiny_bert_dir):
    folder = write_model_config(tmp_path / "bare", LLAMA)
    with pytest.raises(config_module.ConfigError) as caught:
        config_module.validate_config(tiny_study_config(str(folder), str(tmp_path / "toy.csv"), str(tiny_bert_dir)))
    message = str(caught.value)
    assert f"config key 'models.tiny.path': {str(folder)!r} holds config.json but no tokenizer files" in message
    assert "no weights" in message


# ---------------------------------------------------------------- 3. a moved study reruns

def test_manifest_paths_inside_the_study_are_stored_relative(tmp_path, monkeypatch):
    study = tmp_path / "study"
    (study / "resources" / "models" / "m").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    monkeypatch.chdir(study)
    assert paths.portable(study / "resources" / "models" / "m" / "tokenizer.json") == "resources/models/m/tokenizer.json"
    assert paths.portable("resources/models/m") == "resources/models/m"
    assert paths.portable(outside) == str(outside.resolve())


@pytest.fixture(scope="module")
def prepared_tiny(tiny_llama_dir, tmp_path_factory) -> Path:
    """A study folder whose model lives inside it (models.tiny.path: model), prepared there."""
    study = tmp_path_factory.mktemp("moved") / "study"
    shutil.copytree(tiny_llama_dir, study / "model")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(study)
        models.prepare_model("tiny", {"source": "local", "path": "model"}, paths.model_manifest("tiny"), paths.downloads("models"))
    return study


def test_a_prepared_manifest_stores_paths_relative_to_the_study(prepared_tiny):
    body = json.loads((prepared_tiny / paths.model_manifest("tiny")).read_text())
    assert body["path"] == "model" and body["tokenizer"] == "resources/models/tiny/tokenizer.json"


@pytest.mark.parametrize("cwd", ["study", "elsewhere"])
def test_a_moved_manifest_loads_from_the_study_or_from_outside_it(prepared_tiny, tmp_path, monkeypatch, cwd):
    moved = tmp_path / "moved_study"
    shutil.copytree(prepared_tiny, moved)
    monkeypatch.chdir(moved if cwd == "study" else tmp_path)
    manifest = manifests.read_manifest(moved / paths.model_manifest("tiny"))
    assert manifest["path"] == str((moved / "model").resolve())
    assert manifest["tokenizer"] == str((moved / "resources/models/tiny/tokenizer.json").resolve())
    assert tokenizers.load_tokenizer(manifest)("Review: fine")["input_ids"]


def old_manifest(study: Path, root: Path) -> dict:
    """The manifest an older version wrote in `root`: absolute paths."""
    body = json.loads((study / paths.model_manifest("tiny")).read_text())
    return {**body, "path": str(root / "model"), "tokenizer": str(root / "resources/models/tiny/tokenizer.json")}


def test_an_old_absolute_manifest_still_loads(prepared_tiny, tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(old_manifest(prepared_tiny, prepared_tiny.resolve())))
    loaded = manifests.read_manifest(manifest)
    assert loaded["path"] == str(prepared_tiny.resolve() / "model")
    assert tokenizers.load_tokenizer(loaded)("Review: fine")["input_ids"]


def test_an_old_absolute_manifest_of_a_moved_study_loads_from_where_it_is_now(prepared_tiny, tmp_path, monkeypatch):
    moved = tmp_path / "now"
    shutil.copytree(prepared_tiny, moved)
    # A GGUF model is converted into resources/models/{model}/hf, inside the study.
    shutil.copytree(prepared_tiny / "model", moved / "resources/models/tiny/hf")
    before = tmp_path / "before"  # where the study was, gone now
    file = moved / paths.model_manifest("tiny")
    file.write_text(json.dumps({**old_manifest(prepared_tiny, before), "path": str(before / "resources/models/tiny/hf")}))
    monkeypatch.chdir(moved)
    loaded = manifests.read_manifest(paths.model_manifest("tiny"))
    assert loaded["path"] == str((moved / "resources/models/tiny/hf").resolve())
    assert loaded["tokenizer"] == str((moved / "resources/models/tiny/tokenizer.json").resolve())
    assert tokenizers.load_tokenizer(loaded)("Review: fine")["input_ids"]
    # The model folder was outside resources/ in the old study: nothing says where it is now.
    file.write_text(json.dumps({**old_manifest(prepared_tiny, tmp_path / "before"), "path": str(tmp_path / "gone")}))
    with pytest.raises(manifests.ModelError) as caught:
        manifests.read_manifest(paths.model_manifest("tiny"))
    message = str(caught.value)
    assert message.startswith(f"{paths.model_manifest('tiny')}: the model folder {str(tmp_path / 'gone')!r} does not exist")
    assert f"--forcerun {paths.model_manifest('tiny')}" in message


def test_an_old_absolute_encoder_manifest_of_a_moved_study_loads(tmp_path, tiny_bert_dir, monkeypatch):
    moved = tmp_path / "now"
    shutil.copytree(tiny_bert_dir, moved / "resources/encoder/model")
    file = moved / paths.encoder_manifest()
    file.write_text(json.dumps({"name": "tiny-bert", "path": str(tmp_path / "before/resources/encoder/model")}))
    monkeypatch.chdir(moved)
    assert manifests.read_encoder_manifest(paths.encoder_manifest())["path"] == str((moved / "resources/encoder/model").resolve())
    file.write_text(json.dumps({"name": "tiny-bert", "path": str(tmp_path / "gone")}))
    with pytest.raises(manifests.EncoderError, match="the encoder folder .* does not exist"):
        manifests.read_encoder_manifest(paths.encoder_manifest())


@pytest.mark.workflow
def test_a_moved_study_reruns_an_extraction_shard_and_completes(tmp_path, tiny_llama_dir, tiny_bert_dir):
    from .test_workflow import planned_jobs, snakemake, write_config

    study = tmp_path / "study"
    # Model, encoder and data inside the study, named relative to it: the study moves as a whole.
    shutil.copytree(tiny_llama_dir, study / "model")
    shutil.copytree(tiny_bert_dir, study / "encoder")
    pl.DataFrame(toy_sentiment_rows()).write_csv(study / "toy.csv")
    write_config(study, tiny_study_config("model", "toy.csv", "encoder"))
    done = snakemake(study)
    assert done.returncode == 0, done.stderr[-5000:]

    moved = tmp_path / "moved" / "study"
    moved.parent.mkdir()
    shutil.move(study, moved)
    assert planned_jobs(moved) == {}  # moving re-runs nothing
    # One job that loads the model and one that loads the encoder, through their manifests.
    shard, embeddings = paths.shard("tiny", "toy", 0, "random", "000"), paths.embeddings("toy")
    before = (moved / shard).stat().st_mtime_ns
    done = snakemake(moved, "--forcerun", shard, embeddings)
    assert done.returncode == 0, done.stderr[-5000:]
    assert (moved / shard).stat().st_mtime_ns > before
    assert {"extract_shard", "embed_task"} <= set(re.findall(r"^(?:local)?rule (\w+):", done.stdout + done.stderr, re.M))
    assert (moved / paths.report()).is_file()


# ---------------------------------------------------------------- 4. an encoder shorter than 256 tokens

class Limits:
    def __init__(self, **fields):
        self.__dict__.update(fields)


@pytest.mark.parametrize(
    ("model", "tokenizer_max", "sentence_max", "expected"),
    [
        ({"model_type": "bert", "max_position_embeddings": 512}, 512, 256, 256),  # all-MiniLM-L6-v2
        ({"model_type": "bert", "max_position_embeddings": 64}, int(1e30), None, 64),  # no tokenizer limit
        ({"model_type": "bert", "max_position_embeddings": 512}, 128, None, 128),
        ({"model_type": "mpnet", "max_position_embeddings": 514}, 512, 384, 256),
        ({"model_type": "roberta", "max_position_embeddings": 66, "pad_token_id": 1}, int(1e30), None, 64),
        ({"model_type": "bert", "max_position_embeddings": 512}, 512, 128, 128),
        ({"model_type": "bert"}, int(1e30), None, 256),
    ],
    ids=["minilm", "positions", "tokenizer", "mpnet", "roberta offset", "sentence-transformers", "unknown"],
)
def test_truncation_length_is_the_encoders_own_limit(model, tokenizer_max, sentence_max, expected):
    assert embedding.truncation_length(Limits(**model), tokenizer_max, sentence_max) == expected


def test_embed_truncates_a_long_text_at_the_encoders_positions(tiny_bert_dir):
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tiny_bert_dir).max_position_embeddings == 64
    words = ["good", "bad", "film", "plot", "story"] * 40  # 200 words, one token each
    long, cut = " ".join(words), " ".join(words[:62])  # 64 positions: [CLS], 62 words, [SEP]
    vectors = embedding.embed([long, cut, "a short one"], tiny_bert_dir)
    assert vectors.shape == (3, 32)
    assert vectors[0] == pytest.approx(vectors[1], abs=1e-6)
