"""Section 5.5 / Table 2: does ONE head, chosen on some examples, reproduce ICL on others?

The prompts of a set are split once (stratified by gold label, seeded by prompts.split_seed so every
seed holds out the same test examples) into a select part and a disjoint held-out part. On the select
part we choose the head with the best agreement with the model's ICL prediction (per kernel variant)
and, for the hidden-state baseline, the layer; on the held-out part we only evaluate those choices.

Baselines are kernel regressions over the same demonstrations with a cosine-similarity kernel,
y = argmax_c sum_i K(x_test, x_i) e(y_i)_c / sum_i K(x_test, x_i), on sentence-encoder embeddings
and on the studied model's own hidden state of each input run alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from . import schemas, zero_shot
from .encoder import read_embeddings, unit_rows
from .reconstruction import KERNELS, prediction_grid


class HeldoutError(ValueError):
    """A select/held-out split that cannot be made; the message names the config keys."""


def select_heldout(labels: np.ndarray, n_select: int, n_heldout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, label-stratified index sets of sizes n_select and n_heldout (sorted)."""
    n = len(labels)
    if n_select + n_heldout > n:
        raise HeldoutError(
            f"config keys 'analysis.n_select'={n_select} and 'analysis.n_heldout'={n_heldout} need "
            f"{n_select + n_heldout} prompts; the set has {n} (prompts.n_eval)"
        )
    rng = np.random.default_rng(seed)
    # Interleave the classes in a random order, so any prefix of the order is as balanced as it can be.
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    rank = np.concatenate([np.arange((labels == c).sum()) / (labels == c).sum() for c in np.unique(labels)])
    order = order[np.lexsort((rng.random(n), rank))]
    return np.sort(order[:n_select]), np.sort(order[n_select : n_select + n_heldout])


def ablation_ids(heldout: np.ndarray, labels: np.ndarray, limit: int) -> np.ndarray:
    """The held-out prompt ids the ablations use (sorted): all of them, or `limit` taken round-robin
    over the gold classes in prompt-id order, so a subset is as class-balanced as the held-out set
    allows (prompt ids follow the data file, which may be sorted by label)."""
    order = np.argsort(heldout, kind="stable")
    ids, labels = np.asarray(heldout)[order], np.asarray(labels)[order]
    if not limit:
        return ids
    rank = np.zeros(len(ids))
    for c in np.unique(labels):
        rank[labels == c] = np.arange((labels == c).sum())
    return np.sort(ids[np.lexsort((labels, rank))[:limit]])


def kernel_regression(similarity: np.ndarray, demo_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """The paper's formula for similarities (..., k) and labels (..., k); a negative sum of similarities
    flips the vote, exactly as the normalized formula does."""
    votes = np.einsum("...k,...kc->...c", similarity, np.eye(n_classes)[demo_labels])
    return np.argmax(votes / similarity.sum(axis=-1, keepdims=True), axis=-1)


def cosine_similarities(vectors: dict[str, np.ndarray], queries: list[str], demos: list[list[str]]) -> np.ndarray:
    """cos(v(x_test), v(x_i)) for every prompt and demonstration: (prompts, k)."""
    q = unit_rows(np.stack([vectors[i] for i in queries]))
    d = unit_rows(np.stack([np.stack([vectors[i] for i in row]) for row in demos]))
    return np.einsum("pd,pkd->pk", q, d)


def agreement(predictions: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return (predictions == reference[(...,) + (None,) * (predictions.ndim - 1)]).mean(axis=0)


def heldout_rows(
    prompts: pd.DataFrame, recon: pa.Table, embeddings: dict[str, np.ndarray], hidden: dict[str, np.ndarray],
    encoder: str, n_classes: int, n_select: int, n_heldout: int, seed: int,
) -> dict[str, list]:
    """Columns of HELDOUT: each method's choice on the select split, its predictions on the held-out one."""
    prompts = prompts.sort_values("prompt_id").reset_index(drop=True)
    select, heldout = select_heldout(prompts.label.to_numpy(), n_select, n_heldout, seed)
    icl = None
    methods: list[tuple[str, str, float, np.ndarray]] = []  # (method, choice, select agreement, predictions)
    for kernel in KERNELS:
        ids, _, icl, grid = prediction_grid(recon, kernel)
        if not np.array_equal(ids, prompts.prompt_id.to_numpy()):
            raise HeldoutError("the reconstruction table and the prompts hold different prompts; re-run reconstruct")
        scores = agreement(grid[select], icl[select])
        layer, head = np.unravel_index(np.argmax(scores), scores.shape)
        methods.append((f"head_{kernel}", f"L{layer} H{head}", float(scores[layer, head]), grid[:, layer, head]))
    demo_labels = np.stack(prompts.demo_labels.map(np.asarray))
    queries, demos = prompts.example_id.tolist(), prompts.demo_ids.tolist()
    encoder_pred = kernel_regression(cosine_similarities(embeddings, queries, demos), demo_labels, n_classes)
    methods.append(("kr_encoder", encoder, float(agreement(encoder_pred[select], icl[select])), encoder_pred))
    n_layers = next(iter(hidden.values())).shape[0]
    by_layer = np.stack([
        kernel_regression(cosine_similarities({i: v[layer] for i, v in hidden.items()}, queries, demos), demo_labels, n_classes)
        for layer in range(n_layers)
    ], axis=1)  # (prompts, layers)
    scores = agreement(by_layer[select], icl[select])
    best = int(np.argmax(scores))
    methods.append(("kr_hidden", f"layer {best}", float(scores[best]), by_layer[:, best]))
    null = int(np.bincount(icl[select], minlength=n_classes).argmax())
    columns: dict[str, list] = {name: [] for name in schemas.HELDOUT.names}
    for method, choice, select_agreement, predictions in methods:
        for i in heldout:
            row = {
                "prompt_id": int(prompts.prompt_id[i]), "example_id": prompts.example_id[i], "method": method,
                "choice": choice, "select_agreement": select_agreement, "label": int(prompts.label[i]),
                "icl_prediction": int(icl[i]), "null_prediction": null, "prediction": int(predictions[i]),
            }
            for name in columns:
                columns[name].append(row[name])
    return columns


def needed(table: dict[str, np.ndarray], prompts: pd.DataFrame, where: str) -> dict[str, np.ndarray]:
    """The vectors of every query and demonstration of the prompts (an error names the table otherwise)."""
    ids = sorted(set(prompts.example_id) | {d for row in prompts.demo_ids for d in row})
    missing = [i for i in ids if i not in table]
    if missing:
        raise HeldoutError(f"{where}: no vector for examples {missing[:3]}; it was built from a different split")
    return {i: table[i] for i in ids}


def write_heldout(
    prompts_path: str | Path, recon_path: str | Path, zero_shot_path: str | Path, embeddings_path: str | Path,
    encoder: str, n_classes: int, cfg: dict, seed: int, out: str | Path,
) -> None:
    prompts = schemas.read_table(prompts_path, schemas.PROMPTS).to_pandas()
    recon = schemas.read_table(recon_path, schemas.RECONSTRUCTION)
    embeddings = needed(read_embeddings(embeddings_path), prompts, str(embeddings_path))
    hidden = needed(zero_shot.read_zero_shot(zero_shot_path).hidden.to_dict(), prompts, str(zero_shot_path))
    columns = heldout_rows(prompts, recon, embeddings, hidden, encoder, n_classes, cfg["n_select"], cfg["n_heldout"], seed)
    schemas.write_table(columns, schemas.HELDOUT, out)


def from_snakemake(smk) -> None:
    write_heldout(
        smk.input.prompts, smk.input.reconstruction, smk.input.zero_shot, smk.input.embeddings, smk.params.encoder,
        smk.params.n_classes, smk.params.analysis, smk.params.split_seed, smk.output[0],
    )
