"""Section 5.2: each attention head as a kernel regression over the demonstrations.

For a head, demonstration i gets kernel weight a_i read off the last token's attention (kernels.py:
the max, label and mean readings); the head's reconstruction is y_tilde = argmax_c sum_i a_i [y_i = c].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from . import schemas
from .kernels import ATTENTION_KERNELS, attention_weights, kernel_vote
from .readers import iter_prompts, prediction_grid, read_attention_rows


def null_baseline(predictions: np.ndarray, gold: np.ndarray) -> tuple[float, float]:
    """Agreement and accuracy of always answering the class the model predicts most often."""
    majority = np.bincount(predictions).argmax()
    return float(np.mean(predictions == majority)), float(np.mean(gold == majority))


def head_predictions(prompts: pa.Table, shards: pa.Table, n_classes: int) -> dict[str, list]:
    """Every head's reconstruction y_tilde for every prompt and kernel (columns of RECONSTRUCTION)."""
    columns: dict[str, list] = {name: [] for name in schemas.RECONSTRUCTION.names}
    for p in iter_prompts(prompts, shards):
        weights = attention_weights(p["attention"], p["x_start"], p["y_pos"])
        demo_labels = np.asarray(p["demo_labels"])
        for name in ATTENTION_KERNELS:
            row = {
                **p,
                "kernel": name,
                "head_predictions": kernel_vote(weights[name], demo_labels, n_classes).astype(np.int16).ravel(),
            }
            for column in columns:
                columns[column].append(row[column])
    return columns


def sink_attention(shards: pa.Table) -> np.ndarray:
    """Every head's mean attention from the last token to position 0 over the prompts: (layers, heads).
    Without a BOS token position 0 is the first demonstration's first token and the model's sink."""
    meta = shards.select(["n_layers", "n_heads", "n_tokens"]).to_pylist()
    attention = shards.column("attention")
    rows = [attention[i].values.to_numpy(zero_copy_only=False)[:: m["n_tokens"]].astype(np.float64) for i, m in enumerate(meta)]
    return np.mean(rows, axis=0).reshape(meta[0]["n_layers"], meta[0]["n_heads"])


def summarize(recon: pa.Table, sink: np.ndarray) -> tuple[dict, dict]:
    """Per (layer, head, kernel) agreement with the ICL prediction, accuracy and the head's attention on
    position 0 (`sink`, layers x heads); prompt-level summary."""
    heads: dict[str, list] = {name: [] for name in schemas.HEADS.names}
    for name in ATTENTION_KERNELS:
        _, gold, predictions, grid = prediction_grid(recon, name)
        n_layers, n_heads = grid.shape[1:]
        layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
        heads["layer"] += layer.ravel().tolist()
        heads["head"] += head.ravel().tolist()
        heads["kernel"] += [name] * layer.size
        heads["agreement"] += (grid == predictions[:, None, None]).mean(axis=0).ravel().tolist()
        heads["accuracy"] += (grid == gold[:, None, None]).mean(axis=0).ravel().tolist()
        heads["sink_attention"] += sink.ravel().tolist()
    null_agreement, null_accuracy = null_baseline(predictions, gold)
    summary = {
        "n_prompts": [len(predictions)],
        "icl_accuracy": [float(np.mean(predictions == gold))],
        "null_agreement": [null_agreement],
        "null_accuracy": [null_accuracy],
    }
    return heads, summary


def score_heads(prompts: pa.Table, shards: pa.Table, n_classes: int) -> tuple[dict, dict]:
    recon = pa.Table.from_pydict(head_predictions(prompts, shards, n_classes), schema=schemas.RECONSTRUCTION)
    return summarize(recon, sink_attention(shards))


def write_scores(
    prompts_path: str | Path, shard_paths: list[str], n_classes: int, recon_out: str | Path, heads_out: str | Path,
    summary_out: str | Path,
) -> None:
    prompts = schemas.read_table(prompts_path, schemas.PROMPTS)
    shards = read_attention_rows(shard_paths)
    recon = pa.Table.from_pydict(head_predictions(prompts, shards, n_classes), schema=schemas.RECONSTRUCTION)
    heads, summary = summarize(recon, sink_attention(shards))
    schemas.write_table(recon, schemas.RECONSTRUCTION, recon_out)
    schemas.write_table(heads, schemas.HEADS, heads_out)
    schemas.write_table(summary, schemas.SUMMARY, summary_out)


def from_snakemake(smk) -> None:
    write_scores(
        smk.input.prompts, list(smk.input.shards), smk.params.n_classes, smk.output.reconstruction,
        smk.output.heads, smk.output.summary,
    )
