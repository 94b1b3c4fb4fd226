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
import pyarrow.compute as pc

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
    fields = ["prompt_id", "example_id", "label", "demo_ids", "demo_labels", "x_start", "y_pos", "query_start", "input_ids"]
    for row in prompts.select(fields).to_pylist():
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


def head_predictions(prompts: pa.Table, shards: pa.Table, n_classes: int) -> dict[str, list]:
    """Every head's reconstruction y_tilde for every prompt and kernel (columns of RECONSTRUCTION)."""
    columns: dict[str, list] = {name: [] for name in schemas.RECONSTRUCTION.names}
    for p in iter_prompts(prompts, shards):
        weights = kernel_weights(p["attention"], p["x_start"], p["y_pos"])
        demo_labels = np.asarray(p["demo_labels"])
        for name in KERNELS:
            row = {
                **p,
                "kernel": name,
                "head_predictions": reconstruct(weights[name], demo_labels, n_classes).astype(np.int16).ravel(),
            }
            for column in columns:
                columns[column].append(row[column])
    return columns


def prediction_grid(recon: pa.Table, kernel: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(prompt ids, gold labels, ICL predictions, head predictions (prompts, layers, heads)) of one kernel."""
    rows = recon.filter(pc.equal(recon.column("kernel"), kernel)).sort_by("prompt_id")
    n_layers, n_heads = rows.column("n_layers")[0].as_py(), rows.column("n_heads")[0].as_py()
    flat = rows.column("head_predictions").combine_chunks().values.to_numpy(zero_copy_only=False)
    return (
        rows.column("prompt_id").to_numpy(),
        rows.column("label").to_numpy(),
        rows.column("prediction").to_numpy(),
        flat.reshape(rows.num_rows, n_layers, n_heads),
    )


def summarize(recon: pa.Table) -> tuple[dict, dict]:
    """Per (layer, head, kernel) agreement with the ICL prediction and accuracy; prompt-level summary."""
    heads: dict[str, list] = {name: [] for name in schemas.HEADS.names}
    for name in KERNELS:
        _, gold, predictions, grid = prediction_grid(recon, name)
        n_layers, n_heads = grid.shape[1:]
        layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
        heads["layer"] += layer.ravel().tolist()
        heads["head"] += head.ravel().tolist()
        heads["kernel"] += [name] * layer.size
        heads["agreement"] += (grid == predictions[:, None, None]).mean(axis=0).ravel().tolist()
        heads["accuracy"] += (grid == gold[:, None, None]).mean(axis=0).ravel().tolist()
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
    return summarize(recon)


def write_scores(
    prompts_path: str | Path, shard_paths: list[str], n_classes: int, recon_out: str | Path, heads_out: str | Path,
    summary_out: str | Path,
) -> None:
    prompts = schemas.read_table(prompts_path, schemas.PROMPTS)
    shards = schemas.read_tables(shard_paths, schemas.SHARD)
    recon = pa.Table.from_pydict(head_predictions(prompts, shards, n_classes), schema=schemas.RECONSTRUCTION)
    heads, summary = summarize(recon)
    schemas.write_table(recon, schemas.RECONSTRUCTION, recon_out)
    schemas.write_table(heads, schemas.HEADS, heads_out)
    schemas.write_table(summary, schemas.SUMMARY, summary_out)


def from_snakemake(smk) -> None:
    write_scores(
        smk.input.prompts, list(smk.input.shards), smk.params.n_classes, smk.output.reconstruction,
        smk.output.heads, smk.output.summary,
    )
