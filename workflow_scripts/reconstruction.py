"""Section 5.2: each attention head as a kernel regression over the demonstrations.

For a head, demonstration i gets kernel weight a_i read off the last token's attention; the head's
reconstruction is y_tilde = argmax_c sum_i a_i [y_i = c] (normalizing by sum_i a_i does not move
the argmax). Three readings of a_i: the paper's maximum over the span [x_i, y_i], the attention on
the label token y_i alone, and the mean over the span.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import schemas

KERNELS = ("max", "label", "mean")


def kernel_weights(attention: np.ndarray, x_start: np.ndarray, y_pos: np.ndarray) -> dict[str, np.ndarray]:
    """Kernel weights (..., k) of each variant from attention rows (..., T); spans are [x_start, y_pos]."""
    spans = [attention[..., s : y + 1] for s, y in zip(x_start, y_pos)]
    return {
        "max": np.stack([s.max(axis=-1) for s in spans], axis=-1),
        "label": attention[..., np.asarray(y_pos)],
        "mean": np.stack([s.mean(axis=-1) for s in spans], axis=-1),
    }


def reconstruct(weights: np.ndarray, demo_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """argmax_c sum_i a_i e(y_i)_c for weights (..., k): the kernel-regression prediction."""
    one_hot = np.eye(n_classes)[np.asarray(demo_labels)]
    return np.argmax(weights @ one_hot, axis=-1)


def iter_prompts(prompts: pa.Table, shards: pa.Table) -> Iterator[dict]:
    """Join prompts with their extraction rows; yields the attention row as (layers, heads, tokens)."""
    by_id = {pid: i for i, pid in enumerate(shards.column("prompt_id").to_pylist())}
    missing = set(prompts.column("prompt_id").to_pylist()) - set(by_id)
    if missing:
        raise ValueError(f"{len(missing)} prompts have no extraction row (e.g. prompt {min(missing)})")
    meta = shards.select(["n_layers", "n_heads", "n_tokens", "prediction"]).to_pylist()
    attention = shards.column("attention")
    for row in prompts.select(["prompt_id", "label", "demo_labels", "x_start", "y_pos", "query_start", "input_ids"]).to_pylist():
        i = by_id[row["prompt_id"]]
        m = meta[i]
        if m["n_tokens"] != len(row["input_ids"]):
            raise ValueError(f"prompt {row['prompt_id']}: attention covers {m['n_tokens']} tokens, prompt has {len(row['input_ids'])}")
        values = attention[i].values.to_numpy(zero_copy_only=False).astype(np.float32)
        yield {**row, **m, "attention": values.reshape(m["n_layers"], m["n_heads"], m["n_tokens"])}


def null_baseline(predictions: np.ndarray, gold: np.ndarray) -> tuple[float, float]:
    """Agreement and accuracy of always answering the class the model predicts most often."""
    majority = np.bincount(predictions).argmax()
    return float(np.mean(predictions == majority)), float(np.mean(gold == majority))


def score_heads(prompts: pa.Table, shards: pa.Table, n_classes: int) -> tuple[dict, dict]:
    """Per (layer, head, kernel) agreement with the ICL prediction and accuracy; prompt-level summary."""
    agree: dict[str, np.ndarray] = {}
    correct: dict[str, np.ndarray] = {}
    predictions, gold = [], []
    for p in iter_prompts(prompts, shards):
        weights = kernel_weights(p["attention"], p["x_start"], p["y_pos"])
        for name in KERNELS:
            y_tilde = reconstruct(weights[name], np.asarray(p["demo_labels"]), n_classes)
            agree[name] = agree.get(name, 0) + (y_tilde == p["prediction"])
            correct[name] = correct.get(name, 0) + (y_tilde == p["label"])
        predictions.append(p["prediction"])
        gold.append(p["label"])
    n = len(predictions)
    n_layers, n_heads = agree[KERNELS[0]].shape
    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    heads: dict[str, list] = {name: [] for name in schemas.HEADS.names}
    for name in KERNELS:
        heads["layer"] += layer.ravel().tolist()
        heads["head"] += head.ravel().tolist()
        heads["kernel"] += [name] * layer.size
        heads["agreement"] += (agree[name] / n).ravel().tolist()
        heads["accuracy"] += (correct[name] / n).ravel().tolist()
    predictions_arr, gold_arr = np.asarray(predictions), np.asarray(gold)
    null_agreement, null_accuracy = null_baseline(predictions_arr, gold_arr)
    summary = {
        "n_prompts": [n],
        "icl_accuracy": [float(np.mean(predictions_arr == gold_arr))],
        "null_agreement": [null_agreement],
        "null_accuracy": [null_accuracy],
    }
    return heads, summary


def write_scores(prompts_path: str | Path, shard_paths: list[str], n_classes: int, heads_out: str | Path, summary_out: str | Path) -> None:
    prompts = schemas.read_table(prompts_path, schemas.PROMPTS)
    shards = schemas.read_tables(shard_paths, schemas.SHARD)
    heads, summary = score_heads(prompts, shards, n_classes)
    schemas.write_table(heads, schemas.HEADS, heads_out)
    schemas.write_table(summary, schemas.SUMMARY, summary_out)


def from_snakemake(smk) -> None:
    write_scores(smk.input.prompts, list(smk.input.shards), smk.params.n_classes, smk.output.heads, smk.output.summary)
