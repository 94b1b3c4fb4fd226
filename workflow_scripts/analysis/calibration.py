"""Contextual calibration (Zhao et al. 2021): small models often answer one label whatever the query.
The prompt's label probabilities are divided by those of the same prompt (same demonstrations, same
order) whose query is a content-free input such as "N/A", and the largest ratio is the calibrated
prediction. Every prompt of a set is calibrated; Table 2 reports its held-out ones beside the
uncalibrated ICL prediction.

No model runs here: the extraction ran each content-free prompt (prompts.content_free) over the
prompt's own keys and values and kept its label logits in the shard, so a change of calibration.*
re-runs only this and Table 2.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from workflow_scripts.core import stats, table_io, tables

log = logging.getLogger(__name__)


class CalibrationError(ValueError):
    """Prompts or shards that do not hold the content-free queries asked for; the message names the
    rule to re-run."""


def calibrate(icl_logits: np.ndarray, content_free_probs: np.ndarray) -> np.ndarray:
    """argmax_c p(c | prompt) / p(c | content-free prompt), per prompt: (n, C), (n, C) -> (n,).
    Zhao et al.'s W = diag(p_cf)^-1 with b = 0; renormalizing would not change the argmax."""
    return np.argmax(stats.softmax(icl_logits.astype(np.float64)) / content_free_probs.astype(np.float64), axis=1)


def text_indices(built: list[str] | None, texts: list[str], where: str) -> list[int]:
    """Where each of `texts` lies among the content-free queries a prompt set was built with."""
    missing = [t for t in texts if t not in (built or [])]
    if missing:
        raise CalibrationError(
            f"{where} holds content-free queries {built} but calibration.content_free asks for {missing}; "
            "re-run build_prompts with them in prompts.content_free (only the sets of study.settings hold them)"
        )
    return [built.index(t) for t in texts]


def content_free_probs(logits: list[list[float] | None], n_classes: int, chosen: list[int], where: str) -> np.ndarray:
    """The label distribution of each prompt's content-free prompts, averaged over the `chosen` ones
    (rows of its flattened (n_queries, C) logits): (n, C)."""
    if any(row is None for row in logits):
        raise CalibrationError(f"{where}: a shard lacks the content-free label logits of its prompts; re-run extract_shard")
    per_prompt = np.asarray(logits, dtype=np.float32).reshape(len(logits), -1, n_classes)[:, chosen]
    return np.mean(stats.softmax(per_prompt.astype(np.float64)), axis=1)


def calibration_columns(ids: list[int], shards: pa.Table, texts: list[int], n_classes: int, where: str) -> dict:
    """Columns of CALIBRATION for prompts `ids`, from their shard rows (prompt_id, label_logits,
    content_free_logits); `texts` are the positions of the averaged queries."""
    by_prompt = {row["prompt_id"]: row for row in shards.to_pylist()}
    missing = sorted(set(ids) - set(by_prompt))
    if missing:
        raise CalibrationError(f"the shards lack prompts {missing[:5]} of the prompt set; re-run extract_shard")
    rows = [by_prompt[i] for i in ids]
    logits = np.asarray([r["label_logits"] for r in rows])
    probs = content_free_probs([r["content_free_logits"] for r in rows], n_classes, texts, where)
    return {
        "prompt_id": ids,
        "content_free_probs": probs.astype(np.float32).tolist(),
        "icl_prediction": np.argmax(logits, axis=1).tolist(),
        "calibrated_prediction": calibrate(logits, probs).tolist(),
    }


def from_snakemake(smk) -> None:
    stored = table_io.read_table(smk.input.prompts, tables.PROMPTS, ["prompt_id", "label_token_ids", "content_free"])
    texts = list(smk.params.content_free)
    chosen = text_indices(stored.column("content_free")[0].as_py(), texts, str(smk.input.prompts))
    ids = sorted(stored.column("prompt_id").to_pylist())
    log.info("%d prompts, content-free queries %s", len(ids), texts)
    shards = table_io.read_tables(list(smk.input.shards), tables.SHARD, ["prompt_id", "label_logits", "content_free_logits"])
    n_classes = len(stored.column("label_token_ids")[0].as_py())
    columns = calibration_columns(ids, shards, chosen, n_classes, str(smk.input.shards[0]))
    table_io.write_table(columns, tables.CALIBRATION, smk.output[0])
