"""Run the model over one shard of prompts and keep what the analyses need from the last token.

This is the simple eager-attention implementation: output_attentions=True materializes every
layer's T x T map and keeps only the last row. It stays as the oracle for faster engines.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import models, schemas

log = logging.getLogger(__name__)


class ExtractionError(RuntimeError):
    """A forward pass whose numbers cannot be trusted; the shard is not written."""


def n_shards(n_prompts: int, shard_size: int) -> int:
    return math.ceil(n_prompts / shard_size)


def shard_rows(prompts: pa.Table, shard: int, shard_size: int) -> pa.Table:
    return prompts.slice(shard * shard_size, shard_size)


def resolve_device(device: str, dtype: str) -> tuple[str, str]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ExtractionError("config key 'extraction.device' is 'cuda' but no CUDA device is visible")
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    return device, dtype


def last_token_outputs(model, input_ids: list[int], label_token_ids: list[int], device: str) -> tuple[np.ndarray, np.ndarray]:
    """(label-word logits, attention row of shape layers x heads x tokens) at the last position."""
    import torch

    ids = torch.tensor([input_ids], device=device)
    with torch.inference_mode():
        out = model(input_ids=ids, output_attentions=True, use_cache=False, logits_to_keep=1)
    logits = out.logits[0, -1, label_token_ids].float().cpu().numpy()
    attention = torch.stack([a[0, :, -1, :] for a in out.attentions]).float().cpu().numpy()
    return logits, attention


def check_finite(prompt_id: int, logits: np.ndarray, attention: np.ndarray) -> None:
    if not np.isfinite(logits).all():
        raise ExtractionError(f"prompt {prompt_id}: label logits are not finite: {logits}")
    bad = np.flatnonzero(~np.isfinite(attention).reshape(attention.shape[0], -1).all(axis=1))
    if bad.size:
        raise ExtractionError(f"prompt {prompt_id}: attention row of layer {int(bad[0])} has NaN or Inf")


def extract_shard(prompts: pa.Table, model, device: str) -> dict:
    """Columns of the SHARD schema for every prompt in `prompts`."""
    from tqdm import tqdm

    columns: dict[str, list] = {name: [] for name in schemas.SHARD.names}
    rows = prompts.select(["prompt_id", "input_ids", "label_token_ids"]).to_pylist()
    for row in tqdm(rows, desc="prompts", mininterval=10):
        logits, attention = last_token_outputs(model, row["input_ids"], row["label_token_ids"], device)
        check_finite(row["prompt_id"], logits, attention)
        n_layers, n_heads, n_tokens = attention.shape
        values = {
            "prompt_id": row["prompt_id"],
            "n_tokens": n_tokens,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "label_logits": logits.tolist(),
            "prediction": int(np.argmax(logits)),
            "attention": attention.astype(np.float16).ravel(),
        }
        for name, value in values.items():
            columns[name].append(value)
    return columns


def write_shard(prompts_path: str | Path, manifest_path: str | Path, shard: int, cfg: dict, out: str | Path) -> None:
    import torch

    torch.set_num_threads(cfg["threads"])
    device, dtype = resolve_device(cfg["device"], cfg["dtype"])
    prompts = shard_rows(schemas.read_table(prompts_path, schemas.PROMPTS), shard, cfg["shard_size"])
    if prompts.num_rows == 0:
        raise ExtractionError(f"{prompts_path}: shard {shard} is empty (extraction.shard_size={cfg['shard_size']})")
    model = models.load_model(models.read_manifest(manifest_path), device, dtype, attn_implementation="eager")
    log.info("shard %d: %d prompts on %s (%s)", shard, prompts.num_rows, device, dtype)
    schemas.write_table(extract_shard(prompts, model, device), schemas.SHARD, out)


def from_snakemake(smk) -> None:
    write_shard(smk.input.prompts, smk.input.manifest, int(smk.wildcards.shard), smk.params.extraction, smk.output[0])
