"""Every test query and pool example run ALONE through the model with the task's template.

Section 5.3 compares demonstrations by the model's zero-shot label distribution P(o|x); Section 5.4
probes keys for argmax_o P(o|x_i); Section 5.5's hidden-state baseline needs a representation of
each input by itself. One forward per example gives all three, cached per model x task (it does not
depend on the seed, so adding a seed never re-runs it).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from workflow_scripts.core import readers, stats, table_io, tables
from workflow_scripts.core.config import configured_label_words
from workflow_scripts.core.split import task_examples
from workflow_scripts.model import engine, loading
from workflow_scripts.prompts.text import fields, label_token_ids, render
from workflow_scripts.sources import manifests, tokenizers

log = logging.getLogger(__name__)


def requests_for(rows: pl.DataFrame, task_cfg: dict, tokenizer) -> list:
    """One request per example: the template's input part alone, scored on the label words."""
    template = task_cfg["template"]
    words = list(configured_label_words(task_cfg).values())
    records = rows.to_dicts()
    label_ids = label_token_ids(tokenizer, template, words, fields(records[0]))
    requests = []
    for row in records:
        text = render(template, [], fields(row)).text
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        requests.append(engine.Request(input_ids=ids, label_token_ids=label_ids, hidden_positions=[len(ids) - 1]))
    return requests


def zero_shot_columns(rows: pl.DataFrame, results: list[dict]) -> dict:
    """Columns of the ZERO_SHOT schema; hidden is (layers, hidden_size) at the last input token."""
    logits = np.stack([r["label_logits"] for r in results])
    probs = stats.softmax(logits.astype(np.float64)).astype(np.float32)
    hidden = [r["hidden"][:, 0] for r in results]
    next_probs = [r["next_probs"].astype(np.float32) for r in results]
    return {
        "next_ids": [r["next_ids"].astype(np.int32) for r in results],
        "next_probs": next_probs,
        "next_rest": [max(0.0, 1.0 - float(p.sum(dtype=np.float64))) for p in next_probs],
        "example_id": rows["example_id"].to_list(),
        "part": rows["part"].to_list(),
        "label": rows["label"].to_list(),
        "probs": probs.tolist(),
        "prediction": probs.argmax(axis=1).tolist(),
        "hidden_shape": [list(h.shape) for h in hidden],
        "hidden": [h.astype(np.float16).ravel() for h in hidden],
    }


def write_zero_shot(
    data_path: str | Path, manifest_path: str | Path, task: str, task_cfg: dict, prompt_cfg: dict, cfg: dict,
    out: str | Path,
) -> None:
    manifest = manifests.read_manifest(manifest_path)
    rows = task_examples(readers.read_task_data(data_path), task_cfg, prompt_cfg, task)
    requests = requests_for(rows, task_cfg, tokenizers.load_tokenizer(manifest, prompt_cfg["prepend_bos"]))
    model, device, dtype = loading.prepared_model(manifest, cfg)
    layers = list(range(model.config.num_hidden_layers))
    log.info("task %s: %d examples alone on %s (%s)", task, len(requests), device, dtype)
    results = engine.run(model, requests, cfg["zero_shot_batch_size"], hidden_layers=layers, top_k=cfg["zero_shot_top_k"])
    table_io.write_table(zero_shot_columns(rows, results), tables.ZERO_SHOT, out)


def from_snakemake(smk) -> None:
    write_zero_shot(
        smk.input.data, smk.input.manifest, smk.wildcards.task, smk.params.task, smk.params.prompts,
        loading.run_settings(smk), smk.output[0],
    )
