"""Section 5.2: each attention head as a kernel regression over the demonstrations.

For a head, demonstration i gets kernel weight a_i read off the last token's attention (kernels.py:
the max, label and mean readings); the head's reconstruction is y_tilde = argmax_c sum_i a_i [y_i = c].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from workflow_scripts.analysis import baselines
from workflow_scripts.analysis.query_dependence import weight_r2
from workflow_scripts.core import table_io, tables
from workflow_scripts.core.kernels import ATTENTION_KERNELS, kernel_vote
from workflow_scripts.core.readers import Shards, kernel_weights, prediction_grid, read_attention_rows


def null_baseline(predictions: np.ndarray, gold: np.ndarray) -> tuple[float, float]:
    """Agreement and accuracy of always answering the class the model predicts most often."""
    majority = np.bincount(predictions).argmax()
    return float(np.mean(predictions == majority)), float(np.mean(gold == majority))


def predictions_from(rows: list[dict], weights: dict[str, np.ndarray], n_classes: int) -> dict[str, list]:
    """Every head's reconstruction y_tilde for every prompt and kernel (columns of RECONSTRUCTION)."""
    columns: dict[str, list] = {name: [] for name in tables.RECONSTRUCTION.names}
    for name in ATTENTION_KERNELS:
        for p, w in zip(rows, weights[name]):
            row = {
                **p,
                "kernel": name,
                "head_predictions": kernel_vote(w, np.asarray(p["demo_labels"]), n_classes).astype(np.int16).ravel(),
            }
            for column in columns:
                columns[column].append(row[column])
    return columns


def head_predictions(prompts: pa.Table, shards: pa.Table, n_classes: int) -> dict[str, list]:
    return predictions_from(*kernel_weights(prompts, shards), n_classes)


def r2_columns(rows: list[dict], weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per kernel, the share of each head's normalized weight variance that slot and slot x label word
    explain, flattened in HEADS order (layer, head)."""
    demo_labels = np.stack([np.asarray(p["demo_labels"]) for p in rows])
    out = {"r2_slot": [], "r2_slot_label": []}
    for name in ATTENTION_KERNELS:
        slot, slot_label = weight_r2(weights[name], demo_labels)
        out["r2_slot"].append(slot.ravel())
        out["r2_slot_label"].append(slot_label.ravel())
    return {key: np.concatenate(v) for key, v in out.items()}


def in_sample_baselines(rows: list[dict], n_classes: int) -> dict[str, list]:
    """SUMMARY's query-free readings, fitted on every prompt (in-sample, like Section 5.2's best head)."""
    demo_labels = np.stack([np.asarray(p["demo_labels"]) for p in rows])
    icl = np.array([p["prediction"] for p in rows])
    every = np.arange(len(rows))
    out = {}
    for b in baselines.query_free_baselines(demo_labels, icl, every, n_classes):
        out[f"{b.name}_agreement"] = [float(np.mean(b.predictions == icl))]
        if b.tied is not None:
            out[f"{b.name}_tie_rate"] = [float(np.mean(b.tied))]
    return out


def sink_attention(rows: list[dict]) -> np.ndarray:
    """Every head's mean attention from the last token to position 0 over the prompts: (layers, heads).
    Without a BOS token position 0 is the first demonstration's first token and the model's sink."""
    return np.mean([r["sink"] for r in rows], axis=0)


def heads_and_summary(recon: pa.Table, sink: np.ndarray, r2: dict[str, np.ndarray] | None = None) -> tuple[dict, dict]:
    """Per (layer, head, kernel) agreement with the ICL prediction, accuracy, the head's attention on
    position 0 (`sink`, layers x heads) and its weights' R^2 on slot and slot x label (r2_columns; nan
    when not given); prompt-level summary."""
    heads: dict[str, list] = {name: [] for name in tables.HEADS.names}
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
    n_rows = len(heads["layer"])
    for key in ("r2_slot", "r2_slot_label"):
        heads[key] = list(r2[key]) if r2 is not None else [float("nan")] * n_rows
    null_agreement, null_accuracy = null_baseline(predictions, gold)
    summary = {
        "n_prompts": [len(predictions)],
        "icl_accuracy": [float(np.mean(predictions == gold))],
        "null_agreement": [null_agreement],
        "null_accuracy": [null_accuracy],
    }
    return heads, summary


def score_set(prompts: pa.Table, shards: Shards | pa.Table, n_classes: int) -> tuple[pa.Table, dict, dict]:
    """RECONSTRUCTION, HEADS and SUMMARY of one prompt set, from one pass over its attention rows."""
    rows, weights = kernel_weights(prompts, shards)
    recon = pa.Table.from_pydict(predictions_from(rows, weights, n_classes), schema=tables.RECONSTRUCTION)
    heads, summary = heads_and_summary(recon, sink_attention(rows), r2_columns(rows, weights))
    return recon, heads, {**summary, **in_sample_baselines(rows, n_classes)}


def score_heads(prompts: pa.Table, shards: Shards | pa.Table, n_classes: int) -> tuple[dict, dict]:
    return score_set(prompts, shards, n_classes)[1:]


def write_scores(
    prompts_path: str | Path, shard_paths: list[str], n_classes: int, recon_out: str | Path, heads_out: str | Path,
    summary_out: str | Path,
) -> None:
    recon, heads, summary = score_set(
        table_io.read_table(prompts_path, tables.PROMPTS), read_attention_rows(shard_paths), n_classes)
    table_io.write_table(recon, tables.RECONSTRUCTION, recon_out)
    table_io.write_table(heads, tables.HEADS, heads_out)
    table_io.write_table(summary, tables.SUMMARY, summary_out)


def from_snakemake(smk) -> None:
    write_scores(
        smk.input.prompts, list(smk.input.shards), smk.params.n_classes, smk.output.reconstruction,
        smk.output.heads, smk.output.summary,
    )
