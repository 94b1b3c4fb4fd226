"""Section 5.4 / Fig. 5: where the kernel's features live.

For every head, linear (ridge, lambda = 0.01 in the paper) probes read the head's KEY vector at
offsets -1..+3 from each demonstration's highest-attention position and predict the model's
zero-shot answer for that demonstration's input, argmax_o P(o|x_i) (the kernel side: keys should
encode x_i's belief state); and read the VALUE vector there to predict the demonstration's label y_i
(the regression side: values should carry e(y_i)). Accuracy is cross-validated with folds grouped by
demonstration example, so no probe is scored on an example it was fitted on.

Where a target is skewed (a model that answers one class for most inputs), a probe that always answers
the majority class reaches the majority share in plain accuracy, so each probe also reports its
balanced accuracy (mean recall per class; any constant answer scores 1 / classes) and that of a
label-shuffled control: the same probe, same folds, fitted on the target permuted across demonstration
examples (seeded by the probe seed), which shows what a probe reaches with no signal to find.

A probe can also succeed without the vector carrying anything beyond the word it sits on: the label
token's value vector encodes which label word it is, so a value probe there reads y_i trivially. Each
probe therefore also reports a token-identity control: the same probe (same ridge, folds and target)
fitted on a one-hot of the prompt's token id at the same sample position. Peaks are each head's own,
so the control is per cell, but it depends only on the tokens: heads whose peaks land on the same
tokens share one fit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from workflow_scripts.core import stats, table_io, tables
from workflow_scripts.core.readers import by_example, list_arrays, read_zero_shot, rows_for


class ProbeError(ValueError):
    """Probe inputs that cannot give a meaningful accuracy; the message names the config key."""


# What probe_samples reads of a shard: the vectors kept at the demonstrations' peak positions.
KEPT_VECTORS = ["prompt_id", "kv_layers", "top_shape", "top_positions", "top_keys", "top_values"]


def read_kept_vectors(paths: list[str]) -> pa.Table:
    """The kept vectors of the prompts that kept them (extraction.kv_max_prompts), from one scan of the
    shards: their attention rows, hidden states and full key/value rows are not read."""
    files = [table_io.checked(p, tables.SHARD, KEPT_VECTORS) for p in paths]
    return pl.scan_parquet(files).select(KEPT_VECTORS).filter(pl.col("top_keys").is_not_null()).collect().to_arrow()


def probe_samples(prompts: pa.Table, shards: pa.Table) -> dict[str, np.ndarray]:
    """Stack the captured vectors of every (prompt, demonstration) pair.

    Returns keys and values as (kv_layers, heads, offsets, samples, head_dim), the token id at each
    vector's position as (kv_layers, heads, offsets, samples), the layer index of each kv layer, and
    per sample the demonstration's example id and label.
    """
    kept = shards.filter(pc.invert(pc.is_null(shards.column("top_keys"))))
    if kept.num_rows == 0:
        raise ProbeError("no prompt kept key/value vectors: set config key 'extraction.kv_layers' (and kv_max_prompts > 0)")
    demos = {r["prompt_id"]: r for r in prompts.select(["prompt_id", "demo_ids", "demo_labels", "input_ids"]).to_pylist()}
    keys, values, tokens, ids, labels = [], [], [], [], []
    layers = None
    rows = kept.select(["prompt_id", "kv_layers", "top_shape", "top_positions"]).to_pylist()
    vectors = zip(list_arrays(kept.column("top_keys")), list_arrays(kept.column("top_values")))
    for row, (row_keys, row_values) in zip(rows, vectors):
        shape = row["top_shape"]  # (kv_layers, heads, k, offsets, head_dim)
        if layers is not None and row["kv_layers"] != layers:
            raise ProbeError(f"prompt {row['prompt_id']} kept layers {row['kv_layers']}, others {layers}: re-run the extraction")
        layers = row["kv_layers"]
        keys.append(row_keys.astype(np.float32).reshape(shape))
        values.append(row_values.astype(np.float32).reshape(shape))
        peaks = np.asarray(row["top_positions"]).reshape(shape[:3])
        tokens.append(peak_tokens(demos[row["prompt_id"]]["input_ids"], peaks)[..., None])  # a trailing dim, as the vectors
        ids += demos[row["prompt_id"]]["demo_ids"]
        labels += demos[row["prompt_id"]]["demo_labels"]
    # (prompts, L, H, k, O, D) -> (L, H, O, prompts * k, D)
    def stack(parts: list[np.ndarray]) -> np.ndarray:
        arr = np.stack(parts)
        n_prompts, n_layers, n_heads, k, n_offsets, dim = arr.shape
        return arr.transpose(1, 2, 4, 0, 3, 5).reshape(n_layers, n_heads, n_offsets, n_prompts * k, dim)

    return {"keys": stack(keys), "values": stack(values), "tokens": stack(tokens)[..., 0], "layers": np.asarray(layers),
            "example_ids": np.asarray(ids), "labels": np.asarray(labels)}


def peak_tokens(input_ids: list[int], peaks: np.ndarray) -> np.ndarray:
    """Token id at each peak + DEMO_OFFSETS, (..., k) peaks -> (..., k, offsets), clipped to the prompt
    as the extraction clips the positions whose vectors it keeps."""
    ids = np.asarray(input_ids)
    return ids[np.clip(peaks[..., None] + np.asarray(tables.DEMO_OFFSETS), 0, ids.size - 1)]


def one_hot_tokens(tokens: np.ndarray) -> np.ndarray:
    """(n,) token ids -> (n, distinct ids) one-hot.

    Preferred to the input embedding: the embedding is a fixed function of the id, so the one-hot says
    everything it does about which word stands there, without loading the model. Unlike the embedding
    it cannot carry over to a word seen only in the held-out fold (such a sample gets the intercept);
    where the fold's words were all seen in training, as at the label words, the two are equivalent.
    """
    _, index = np.unique(tokens, return_inverse=True)
    return np.eye(index.max() + 1)[index.ravel()]


def token_identity_scores(
    tokens: np.ndarray, targets: list[np.ndarray], groups: np.ndarray, n_classes: int, ridge: float, folds: int, seed: int
) -> np.ndarray:
    """Balanced accuracy of the token-identity control for every target and every leading index of
    tokens (..., n), shape (targets, ...): the probe of probe_table (same ridge, same grouped folds from
    `seed`, same targets) on one_hot_tokens.

    The one-hot is as wide as the distinct words at a position, so these fits cost more than the
    probes': cells with the same token at every sample get the same score and each distinct column is
    fitted once, and the targets share its Gram matrix as extra right-hand sides."""
    columns, cell = np.unique(tokens.reshape(-1, tokens.shape[-1]), axis=0, return_inverse=True)
    scores = np.array([
        [stats.balanced_accuracy(predicted, target, n_classes) for predicted, target in zip(
            stats.probe_predictions_many(one_hot_tokens(column), targets, groups, n_classes, ridge, folds, seed), targets)]
        for column in columns
    ])  # (distinct columns, targets)
    return scores[cell.ravel()].T.reshape(len(targets), *tokens.shape[:-1])


def majority_share(targets: np.ndarray) -> float:
    return float(np.bincount(targets).max() / len(targets))


def balanced_chance(targets: np.ndarray) -> float:
    """Balanced accuracy of any constant answer: 1 / the number of classes present in the target."""
    return 1.0 / np.unique(targets).size


def probe_table(samples: dict, zero_shot_predictions: np.ndarray, n_classes: int, ridge: float, folds: int, seed: int) -> dict:
    """Columns of PROBES: accuracy, balanced accuracy and the balanced accuracy of the shuffled and the
    token-identity controls per kv layer, head, vector kind and offset."""
    _, groups = np.unique(samples["example_ids"], return_inverse=True)
    if groups.max() + 1 < folds:
        raise ProbeError(
            f"only {groups.max() + 1} distinct demonstrations were kept, fewer than config key 'analysis.probe_folds'={folds}; "
            "raise extraction.kv_max_prompts"
        )
    columns: dict[str, list] = {name: [] for name in tables.PROBES.names}
    targets = {"key": zero_shot_predictions, "value": samples["labels"]}
    token_scores = token_identity_scores(samples["tokens"], list(targets.values()), groups, n_classes, ridge, folds, seed)
    for (vector, target), token in zip(targets.items(), token_scores):
        scores = stats.probe_scores_many(samples[f"{vector}s"], target, groups, n_classes, ridge, folds, seed)
        accuracy = scores["accuracy"]
        layer, head, offset = np.meshgrid(samples["layers"], np.arange(accuracy.shape[1]), tables.DEMO_OFFSETS, indexing="ij")
        columns["layer"] += layer.ravel().tolist()
        columns["head"] += head.ravel().tolist()
        columns["vector"] += [vector] * accuracy.size
        columns["offset"] += offset.ravel().tolist()
        columns["accuracy"] += accuracy.ravel().tolist()
        columns["majority"] += [majority_share(target)] * accuracy.size
        columns["balanced_accuracy"] += scores["balanced_accuracy"].ravel().tolist()
        columns["shuffled_balanced_accuracy"] += scores["shuffled_balanced_accuracy"].ravel().tolist()
        columns["token_balanced_accuracy"] += token.ravel().tolist()
        columns["chance"] += [balanced_chance(target)] * accuracy.size
        columns["n_samples"] += [len(target)] * accuracy.size
    return columns


def write_probes(
    prompts_path: str | Path, shard_paths: list[str], zero_shot_path: str | Path, n_classes: int, cfg: dict,
    seed: int, out: str | Path,
) -> None:
    samples = probe_samples(table_io.read_table(prompts_path, tables.PROMPTS), read_kept_vectors(shard_paths))
    predicted = by_example(read_zero_shot(zero_shot_path, hidden=False), "prediction")
    predictions = np.asarray(rows_for(predicted, samples["example_ids"].tolist(), str(zero_shot_path)))
    columns = probe_table(samples, predictions, n_classes, cfg["probe_ridge"], cfg["probe_folds"], seed)
    table_io.write_table(columns, tables.PROBES, out)


def from_snakemake(smk) -> None:
    write_probes(
        smk.input.prompts, list(smk.input.shards), smk.input.zero_shot, smk.params.n_classes, smk.params.analysis,
        int(smk.wildcards.seed), smk.output[0],
    )
