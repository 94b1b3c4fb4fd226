"""Contextual calibration (Zhao et al. 2021): small models often answer one label whatever the query.
The prompt's label probabilities are divided by those of the same prompt (same demonstrations, same
order) whose query is a content-free input such as "N/A", and the largest ratio is the calibrated
prediction. Table 2 reports it beside the uncalibrated ICL prediction, on its held-out prompts: only
those run again (a content-free prompt costs a whole forward).
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from workflow_scripts.core import stats, table_io, tables
from workflow_scripts.core.split import select_heldout
from workflow_scripts.model import engine, loading
from workflow_scripts.prompts import sets
from workflow_scripts.sources import manifests

log = logging.getLogger(__name__)


class CalibrationError(ValueError):
    """Content-free prompts that do not match the prompt set; the message names the rule to re-run."""


def calibrate(icl_logits: np.ndarray, content_free_probs: np.ndarray) -> np.ndarray:
    """argmax_c p(c | prompt) / p(c | content-free prompt), per prompt: (n, C), (n, C) -> (n,).
    Zhao et al.'s W = diag(p_cf)^-1 with b = 0; renormalizing would not change the argmax."""
    return np.argmax(stats.softmax(icl_logits.astype(np.float64)) / content_free_probs.astype(np.float64), axis=1)


def check_same_prompts(stored: pa.Table, content_free: dict, text: str) -> None:
    """The content-free prompts must be the stored ones with only the query replaced."""
    same = (stored.column("prompt_id").to_pylist() == content_free["prompt_id"]
            and stored.column("demo_ids").to_pylist() == content_free["demo_ids"]
            and stored.column("demo_labels").to_pylist() == content_free["demo_labels"])
    if not same:
        raise CalibrationError(
            f"the prompts with the content-free query {text!r} hold other demonstrations than the prompt set; "
            "the prompt set is stale: re-run build_prompts for it"
        )


def heldout_positions(stored: pa.Table, n_select: int, n_heldout: int, seed: int) -> np.ndarray:
    """Row positions of Table 2's held-out prompts in the stored prompt set (analysis/head_choice.py's split)."""
    order = np.argsort(stored.column("prompt_id").to_numpy(), kind="stable")
    _, heldout = select_heldout(stored.column("label").to_numpy()[order], n_select, n_heldout, seed)
    return np.sort(order[heldout])


def content_free_probs(model, content_free_sets: list[dict], rows: np.ndarray, batch_size: int) -> np.ndarray:
    """The label distribution of the content-free prompts at `rows`, averaged over the content-free
    inputs: (len(rows), C)."""
    per_input = []
    for columns in content_free_sets:
        requests = [engine.Request(input_ids=columns["input_ids"][i], label_token_ids=columns["label_token_ids"][i])
                    for i in rows]
        logits = np.stack([r["label_logits"] for r in engine.run(model, requests, batch_size)])
        per_input.append(stats.softmax(logits.astype(np.float64)))
    return np.mean(per_input, axis=0)


def calibration_columns(ids: list[int], shards: pa.Table, probs: np.ndarray) -> dict:
    """Columns of CALIBRATION for prompts `ids` (rows of `probs`)."""
    by_prompt = dict(zip(shards.column("prompt_id").to_pylist(), shards.column("label_logits").to_pylist()))
    missing = sorted(set(ids) - set(by_prompt))
    if missing:
        raise CalibrationError(f"the shards lack prompts {missing[:5]} of the prompt set; re-run extract_shard")
    logits = np.asarray([by_prompt[i] for i in ids])
    return {
        "prompt_id": ids,
        "content_free_probs": probs.astype(np.float32).tolist(),
        "icl_prediction": np.argmax(logits, axis=1).tolist(),
        "calibrated_prediction": calibrate(logits, probs).tolist(),
    }


def from_snakemake(smk) -> None:
    stored = table_io.read_table(smk.input.prompts, tables.PROMPTS)
    texts = smk.params.content_free
    free_sets = [sets.set_from_snakemake(smk, text) for text in texts]
    for text, columns in zip(texts, free_sets):
        check_same_prompts(stored, columns, text)
    rows = heldout_positions(stored, smk.params.analysis["n_select"], smk.params.analysis["n_heldout"], smk.params.split_seed)
    cfg = loading.run_settings(smk)
    model, device, dtype = loading.prepared_model(manifests.read_manifest(smk.input.manifest), cfg)
    log.info("%d held-out prompts x %d content-free inputs %s on %s (%s)", len(rows), len(texts), texts, device, dtype)
    probs = content_free_probs(model, free_sets, rows, cfg["batch_size"])
    shards = table_io.read_tables(list(smk.input.shards), tables.SHARD, ["prompt_id", "label_logits"])
    ids = [stored.column("prompt_id")[int(i)].as_py() for i in rows]
    table_io.write_table(calibration_columns(ids, shards, probs), tables.CALIBRATION, smk.output[0])
