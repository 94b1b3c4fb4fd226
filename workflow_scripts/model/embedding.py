"""Sentence embeddings of a task's examples, for the cosine-similarity kernel baseline: the
encoder (prepared by sources/encoder.py) run with transformers directly, pooled as its
sentence-transformers config says."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from workflow_scripts.core import readers, table_io, tables
from workflow_scripts.core.split import task_examples
from workflow_scripts.sources.manifests import EncoderError, read_encoder_manifest

log = logging.getLogger(__name__)



POOLING_CONFIG = "1_Pooling/config.json"


# sentence-transformers' flag for each pooling mode that embed() implements
POOLING_FLAGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


def pooling_mode(model_dir: str | Path) -> str:
    """'mean', 'cls' or 'max', as the sentence-transformers pooling config of `model_dir` says.

    Without a pooling config we fall back to mean pooling, which is what sentence-transformers
    itself does for a plain transformers model.
    """
    path = Path(model_dir) / POOLING_CONFIG
    if not path.is_file():
        return "mean"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise EncoderError(f"{path}: cannot read pooling config: {err}") from err
    if not isinstance(config, dict):
        raise EncoderError(f"{path}: pooling config is not a JSON object")
    # every pooling_mode_* flag counts, so a mode we do not implement (e.g. mean_sqrt_len) is refused
    # rather than silently replaced by another one
    on = sorted(k for k, v in config.items() if k.startswith("pooling_mode_") and v is True)
    if len(on) != 1:
        raise EncoderError(f"{path}: exactly one pooling mode must be true, found {on or 'none'}")
    if on[0] not in POOLING_FLAGS:
        raise EncoderError(f"{path}: pooling mode {on[0]!r} is not supported; use one of {sorted(POOLING_FLAGS)}")
    return POOLING_FLAGS[on[0]]


def _pool(hidden, mask, mode: str):
    """Pool token vectors (batch, tokens, dim) into one vector per text, ignoring padding."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        # padding must never win the max, so it is pushed to -inf first
        return hidden.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


# Tokens an encoder reads of a text at most (all-MiniLM-L6-v2's own max_seq_length); encoders
# with fewer positions are truncated at their own limit (truncation_length).
MAX_LENGTH = 256


SENTENCE_CONFIG = "sentence_bert_config.json"


# Position embeddings that start after the padding index (fairseq's layout): a model with N of them
# reads at most N - pad_token_id - 1 tokens.
OFFSET_POSITIONS = frozenset({
    "camembert", "data2vec-text", "longformer", "mpnet", "roberta", "roberta-prelayernorm", "xlm-roberta",
    "xlm-roberta-xl", "xmod",
})


# Above this, a tokenizer's model_max_length is transformers' stand-in for "not set" (int(1e30)).
NO_LIMIT = 1_000_000


def sentence_max_length(model_dir: str | Path) -> int | None:
    """max_seq_length of the sentence-transformers config, which sentence-transformers truncates at."""
    path = Path(model_dir) / SENTENCE_CONFIG
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("max_seq_length")
    except (OSError, ValueError, AttributeError) as err:
        raise EncoderError(f"{path}: cannot read the sentence-transformers config: {err}") from err
    return int(value) if value else None


def truncation_length(model_config, tokenizer_max: int | None, sentence_max: int | None,
                      max_length: int = MAX_LENGTH) -> int:
    """Tokens per text: `max_length`, lowered to what the encoder can read (its position embeddings,
    its tokenizer's model_max_length) and to sentence-transformers' max_seq_length. Longer input to
    a model with fewer positions fails with a tensor size mismatch."""
    limits = [max_length]
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions:
        if getattr(model_config, "model_type", None) in OFFSET_POSITIONS:
            positions -= (getattr(model_config, "pad_token_id", None) or 0) + 1
        limits.append(positions)
    if tokenizer_max and tokenizer_max < NO_LIMIT:
        limits.append(tokenizer_max)
    if sentence_max:
        limits.append(sentence_max)
    return min(limits)


def embed(texts: list[str], model_dir: str | Path, batch_size: int = 64, max_length: int = MAX_LENGTH) -> np.ndarray:
    """L2-normalised float32 sentence embeddings, one row per text, in the order of `texts`.

    Rows have unit length, so the dot product of two rows is their cosine similarity. Texts are
    truncated at `max_length` tokens or the encoder's own limit, whichever is lower.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    model_dir = Path(model_dir)
    mode = pooling_mode(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True).to("cpu").eval()
    dim = int(model.config.hidden_size)
    limit = truncation_length(model.config, getattr(tokenizer, "model_max_length", None), sentence_max_length(model_dir), max_length)
    if limit < max_length:
        log.info("encoder %s: texts truncated at %d tokens, its own limit", model_dir, limit)
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)

    # texts of similar length share a batch, so little compute goes into padding
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    out = np.empty((len(texts), dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=limit, return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state.float()
            pooled = _pool(hidden, batch["attention_mask"], mode)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.numpy()
    return out


def input_text(row: dict) -> str:
    """What the encoder reads of an example (its TASK_DATA row): its text, and the second segment of a text pair."""
    text_b = row.get("text_b")
    return row["text"] if text_b is None else f"{row['text']} {text_b}"


def write_embeddings(data_path: str | Path, manifest: str | Path, task: str, task_cfg: dict, prompt_cfg: dict, out: str | Path) -> None:
    """Embeddings of every test query and pool example of a task (the examples prompts can hold)."""
    import torch

    torch.set_num_threads(1)
    rows = task_examples(readers.read_task_data(data_path), task_cfg, prompt_cfg, task)
    model_dir = read_encoder_manifest(manifest)["path"]
    vectors = embed([input_text(r) for r in rows.to_dicts()], model_dir)
    log.info("task %s: %d examples embedded (%d dimensions)", task, *vectors.shape)
    columns = {"example_id": rows["example_id"].to_list(), "part": rows["part"].to_list(), "embedding": list(vectors)}
    table_io.write_table(columns, tables.EMBEDDINGS, out)


def from_snakemake(smk) -> None:
    write_embeddings(smk.input.data, smk.input.manifest, smk.wildcards.task, smk.params.task, smk.params.prompts, smk.output[0])
