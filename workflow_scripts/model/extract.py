"""Run the model over one shard of prompts and keep what the analyses need from the last token.

Production runs go through the capture engine (engine.py: the forward pass keeps SDPA and only the
last query's attention row is computed). `eager_outputs` is the plain output_attentions path the
engine is checked against.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from workflow_scripts.core import layers, table_io, tables
from workflow_scripts.model import engine
from workflow_scripts.model.loading import ExtractionError, prepared_model, run_settings
from workflow_scripts.sources import manifests

log = logging.getLogger(__name__)

def shard_rows(prompts: pa.Table, shard: int, shard_size: int) -> pa.Table:
    return prompts.slice(shard * shard_size, shard_size)


def eager_outputs(model, input_ids: list[int], label_token_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The oracle: (label-word logits, attention row layers x heads x tokens) from output_attentions."""
    import torch

    ids = torch.tensor([input_ids], device=engine.input_device(model))
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


def with_layers_resolved(cfg: dict, n_layers: int) -> dict:
    """`cfg` with kv_layers and hidden_layers as this model's layer indices (they may be given
    relative to depth; layers.py)."""
    return {**cfg, **{key: layers.resolve_all(cfg[key], n_layers, f"extraction.{key}") for key in ("kv_layers", "hidden_layers")}}


def context_length(model) -> int | None:
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def requests_for(rows: list[dict], cfg: dict, where: str, max_length: int | None) -> list[engine.Request]:
    """Engine requests for prompt rows; keys/values only for the first `kv_max_prompts` prompts."""
    requests = []
    for row in rows:
        n = len(row["input_ids"])
        if max_length is not None and n > max_length:
            raise ExtractionError(
                f"{where}: prompt {row['prompt_id']} has {n} tokens, more than the model's context of "
                f"{max_length}; lower prompts.k or prompts.max_chars"
            )
        keep_kv = cfg["kv_layers"] and row["prompt_id"] < cfg["kv_max_prompts"]
        hidden = {"last": [n - 1], "query_start": [row["query_start"]], "labels": list(row["y_pos"])}
        requests.append(
            engine.Request(
                input_ids=row["input_ids"],
                label_token_ids=row["label_token_ids"],
                spans=list(zip(row["x_start"], row["y_pos"])) if keep_kv else (),
                kv_positions=[min(y + d, n - 1) for y in row["y_pos"] for d in tables.DEMO_OFFSETS] if keep_kv else (),
                hidden_positions=[p for name in cfg["hidden_positions"] for p in hidden[name]] if cfg["hidden_layers"] else (),
                continuations=tuple(zip(row["content_free_start"] or (), map(tuple, row["content_free_ids"] or ()))),
            )
        )
    return requests


def _flat(result: dict, name: str) -> tuple[np.ndarray | None, list[int] | None]:
    if name not in result:
        return None, None
    return result[name].astype(np.float16).ravel(), list(result[name].shape)


def shard_columns(rows: list[dict], results: list[dict], requests: list[engine.Request], cfg: dict) -> dict:
    """Columns of the SHARD schema, checking every prompt's numbers are finite."""
    columns: dict[str, list] = {name: [] for name in tables.SHARD.names}
    for row, result, request in zip(rows, results, requests):
        check_finite(row["prompt_id"], np.append(result["label_logits"], result.get("continuation_logits", [])), result["attention"])
        n_layers, n_heads, n_tokens = result["attention"].shape
        keys, kv_shape = _flat(result, "keys")
        hidden, hidden_shape = _flat(result, "hidden")
        values = {
            "prompt_id": row["prompt_id"],
            "n_tokens": n_tokens,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "label_logits": result["label_logits"].tolist(),
            "prediction": int(np.argmax(result["label_logits"])),
            "attention": result["attention"].astype(np.float16).ravel(),
            "kv_layers": cfg["kv_layers"] if keys is not None else None,
            "kv_positions": list(request.kv_positions) if keys is not None else None,
            "kv_shape": kv_shape,
            "keys": keys,
            "values": _flat(result, "values")[0],
            "top_positions": result["top_positions"].astype(np.int32).ravel() if keys is not None else None,
            "top_shape": list(result["top_keys"].shape) if keys is not None else None,
            "top_keys": _flat(result, "top_keys")[0],
            "top_values": _flat(result, "top_values")[0],
            "hidden_layers": cfg["hidden_layers"] if hidden is not None else None,
            "hidden_positions": list(request.hidden_positions) if hidden is not None else None,
            "hidden_shape": hidden_shape,
            "hidden": hidden,
            "head_outputs": _flat(result, "head_outputs")[0],
            "content_free_logits": continued.ravel() if (continued := result.get("continuation_logits")) is not None else None,
        }
        for name, value in values.items():
            columns[name].append(value)
    return columns


def extract_shard(prompts: pa.Table, model, cfg: dict, where: str = "prompts") -> dict:
    """Run one shard of prompts through the engine-prepared `model`."""
    from tqdm import tqdm

    rows = prompts.select(["prompt_id", "input_ids", "label_token_ids", "x_start", "y_pos", "query_start",
                           "content_free_start", "content_free_ids"]).to_pylist()
    requests = requests_for(rows, cfg, where, context_length(model))
    results: list[dict] = []
    # Progress in chunks; the engine buckets by length within each and batches the content-free
    # continuations of a whole chunk.
    step = max(cfg["batch_size"] * 8, engine.CONTINUATION_BATCH)
    for start in tqdm(range(0, len(requests), step), desc="prompts", mininterval=10):
        results += engine.run(model, requests[start : start + step], cfg["batch_size"], kv_layers=cfg["kv_layers"],
                              hidden_layers=cfg["hidden_layers"], head_outputs=cfg["head_outputs"])
    return shard_columns(rows, results, requests, cfg)


def write_shard(prompts_path: str | Path, manifest_path: str | Path, shard: int, cfg: dict, out: str | Path) -> None:
    prompts = shard_rows(table_io.read_table(prompts_path, tables.PROMPTS), shard, cfg["shard_size"])
    if prompts.num_rows == 0:
        raise ExtractionError(f"{prompts_path}: shard {shard} is empty (extraction.shard_size={cfg['shard_size']})")
    model, device, dtype = prepared_model(manifests.read_manifest(manifest_path), cfg)
    cfg = with_layers_resolved(cfg, model.config.num_hidden_layers)
    log.info("shard %d: %d prompts on %s (%s), batch size %d", shard, prompts.num_rows, device, dtype, cfg["batch_size"])
    table_io.write_table(extract_shard(prompts, model, cfg, str(prompts_path)), tables.SHARD, out)


def from_snakemake(smk) -> None:
    write_shard(smk.input.prompts, smk.input.manifest, int(smk.wildcards.shard), run_settings(smk), smk.output[0])
