"""Section 5.5 / Table 2: does ONE head, chosen on some examples, reproduce ICL on others?

The prompts of a set are split once (stratified by gold label, seeded by prompts.split_seed so every
seed holds out the same test examples) into a select part and a disjoint held-out part. On the select
part we choose the head with the best agreement with the model's ICL prediction (per kernel variant)
and, for the hidden-state baseline, the layer; on the held-out part we only evaluate those choices.

Baselines are kernel regressions over the same demonstrations with a cosine-similarity kernel,
y = argmax_c sum_i K(x_test, x_i) e(y_i)_c / sum_i K(x_test, x_i), on sentence-encoder embeddings
and on the studied model's own hidden state of each input run alone; and the query-free readings of
baselines.py (recency, the uniform kernel, a positional and a slot x label-word kernel), chosen or
fitted on the select split, which a head must beat before it reads like a kernel.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from workflow_scripts.analysis import baselines
from workflow_scripts.analysis.head_choice import agreement, head_split
from workflow_scripts.core import table_io, tables
from workflow_scripts.core.kernels import ATTENTION_KERNELS, cosine_weights, kernel_vote
from workflow_scripts.core.readers import hidden_states, list_arrays, read_embeddings, read_zero_shot, rows_for


class HeldoutError(ValueError):
    """Tables of one prompt set that do not belong together; the message names the rule to re-run."""


def demo_labels(prompts: pl.DataFrame) -> np.ndarray:
    """(prompts, k): every prompt's demonstration labels."""
    return np.stack(list_arrays(prompts["demo_labels"]))


def cosine_votes(vectors: dict[str, np.ndarray], prompts: pl.DataFrame, n_classes: int) -> np.ndarray:
    """The kernel-regression prediction of every prompt with a cosine kernel over `vectors`
    (example id -> vector, holding every query and demonstration of the prompts)."""
    queries = np.stack([vectors[i] for i in prompts["example_id"].to_list()])
    demos = np.stack([np.stack([vectors[i] for i in row]) for row in prompts["demo_ids"].to_list()])
    return kernel_vote(cosine_weights(queries, demos), demo_labels(prompts), n_classes)


def examples_of(prompts: pl.DataFrame, table: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """The rows of `table` for every query and demonstration of the prompts."""
    ids = sorted(set(prompts["example_id"].to_list()) | {d for row in prompts["demo_ids"].to_list() for d in row})
    return dict(zip(ids, rows_for(table, ids, where)))


def heldout_rows(
    prompts: pl.DataFrame, recon: pa.Table, embeddings: dict[str, np.ndarray], hidden: dict[str, np.ndarray],
    encoder: str, n_classes: int, n_select: int, n_heldout: int, seed: int,
    calibrated: tuple[str, Mapping[int, int | None]] | None = None,
) -> dict[str, list]:
    """Columns of HELDOUT: each method's choice on the select split, its predictions on the held-out one.
    `calibrated` (content-free inputs, calibrated ICL prediction by prompt id) adds the contextually
    calibrated ICL prediction as one more method."""
    prompts = prompts.sort("prompt_id", maintain_order=True)
    methods: list[tuple[str, str, float, np.ndarray, np.ndarray | None]] = []  # (method, choice, select agreement, predictions, tied)
    for kernel in ATTENTION_KERNELS:
        split = head_split(recon, kernel, n_select, n_heldout, seed)
        if not np.array_equal(split.ids, prompts["prompt_id"].to_numpy()):
            raise HeldoutError("the reconstruction table and the prompts hold different prompts; re-run reconstruct")
        scores = split.select_agreement()
        layer, head = np.unravel_index(np.argmax(scores), scores.shape)
        methods.append((f"head_{kernel}", f"L{layer} H{head}", float(scores[layer, head]), split.grid[:, layer, head], None))
    icl, select, heldout = split.icl, split.select, split.heldout
    for b in baselines.query_free_baselines(demo_labels(prompts), icl, select, n_classes):
        methods.append((b.name, b.choice, float(agreement(b.predictions[select], icl[select])), b.predictions, b.tied))
    encoder_pred = cosine_votes(embeddings, prompts, n_classes)
    methods.append(("kr_encoder", encoder, float(agreement(encoder_pred[select], icl[select])), encoder_pred, None))
    n_layers = next(iter(hidden.values())).shape[0]
    by_layer = np.stack([
        cosine_votes({i: v[layer] for i, v in hidden.items()}, prompts, n_classes) for layer in range(n_layers)
    ], axis=1)  # (prompts, layers)
    scores = agreement(by_layer[select], icl[select])
    best = int(np.argmax(scores))
    methods.append(("kr_hidden", f"layer {best}", float(scores[best]), by_layer[:, best], None))
    if calibrated is not None:
        inputs, by_prompt = calibrated
        # Calibrated on the held-out prompts only: -1 elsewhere (and where the table has no prediction).
        predictions = np.array([-1 if by_prompt.get(i) is None else by_prompt[i] for i in prompts["prompt_id"].to_list()])
        if (predictions[heldout] < 0).any():
            raise HeldoutError("the calibration table lacks held-out prompts of this split; re-run calibrate")
        # Calibrated on the held-out prompts only: nothing is chosen on the select split.
        methods.append(("icl_calibrated", inputs, float("nan"), predictions, None))
    null = int(np.bincount(icl[select], minlength=n_classes).argmax())
    columns: dict[str, list] = {name: [] for name in tables.HELDOUT.names}
    prompt_ids, example_ids, labels = (prompts[c].to_list() for c in ("prompt_id", "example_id", "label"))
    for method, choice, select_agreement, predictions, tied in methods:
        for i in heldout:
            row = {
                "prompt_id": int(prompt_ids[i]), "example_id": example_ids[i], "method": method,
                "choice": choice, "select_agreement": select_agreement, "label": int(labels[i]),
                "icl_prediction": int(icl[i]), "null_prediction": null, "prediction": int(predictions[i]),
                "tied": None if tied is None else bool(tied[i]),
            }
            for name in columns:
                columns[name].append(row[name])
    return columns


def calibrated_predictions(path: str | Path, prompt_ids: np.ndarray, content_free: list[str]) -> tuple[str, dict[int, int | None]]:
    """The calibration rule's prediction by prompt id (it calibrates the held-out prompts only), named
    by its content-free inputs."""
    table = table_io.read_table(path, tables.CALIBRATION).select(["prompt_id", "calibrated_prediction"]).to_pydict()
    if not set(table["prompt_id"]) <= set(prompt_ids.tolist()):
        raise HeldoutError(f"{path} holds prompts the prompt set does not; re-run calibrate")
    return "content-free " + ", ".join(map(repr, content_free)), dict(zip(table["prompt_id"], table["calibrated_prediction"]))


def write_heldout(
    prompts_path: str | Path, recon_path: str | Path, zero_shot_path: str | Path, embeddings_path: str | Path,
    encoder: str, n_classes: int, cfg: dict, seed: int, out: str | Path,
    calibration_path: str | Path | None = None, content_free: list[str] = (),
) -> None:
    prompts = pl.from_arrow(table_io.read_table(prompts_path, tables.PROMPTS))
    recon = table_io.read_table(recon_path, tables.RECONSTRUCTION)
    embeddings = examples_of(prompts, read_embeddings(embeddings_path), str(embeddings_path))
    hidden = examples_of(prompts, hidden_states(read_zero_shot(zero_shot_path)), str(zero_shot_path))
    calibrated = None
    if calibration_path is not None:
        calibrated = calibrated_predictions(calibration_path, prompts["prompt_id"].to_numpy(), content_free)
    columns = heldout_rows(
        prompts, recon, embeddings, hidden, encoder, n_classes, cfg["n_select"], cfg["n_heldout"], seed, calibrated
    )
    table_io.write_table(columns, tables.HELDOUT, out)


def from_snakemake(smk) -> None:
    write_heldout(
        smk.input.prompts, smk.input.reconstruction, smk.input.zero_shot, smk.input.embeddings, smk.params.encoder,
        smk.params.n_classes, smk.params.analysis, smk.params.split_seed, smk.output[0],
        smk.input.get("calibration"), smk.params.content_free,
    )
