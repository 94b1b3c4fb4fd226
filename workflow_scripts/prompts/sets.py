"""ICL prompts: for one task x seed x setting, choose each test query's demonstrations
(random class-balanced draws or retrieval), render and tokenize the prompt (text.py) and write the
PROMPTS table.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from workflow_scripts.core import readers, tables
from workflow_scripts.core.config import configured_label_words
from workflow_scripts.core.kernels import unit_rows
from workflow_scripts.core.split import SplitError, check_pool_choice, heldout_prompt_ids, sample_balanced, task_split
from workflow_scripts.prompts import perturb, retrieval
from workflow_scripts.prompts.text import PromptError, fields, label_token_ids, perturbed, render, tokenize
from workflow_scripts.sources import manifests, tokenizers
from workflow_scripts.sources.describe import describe_source

log = logging.getLogger(__name__)


def build_prompts(
    data: pl.DataFrame, task_cfg: dict, prompt_cfg: dict, setting: dict, seed: int, tokenizer, task: str,
    part: str = "eval", vectors: dict[str, np.ndarray] | None = None, queries_kept: np.ndarray | None = None,
    content_free: list[str] = (),
) -> dict:
    """All prompts of one task x seed x setting, as columns of the PROMPTS schema.

    `part` picks the queries: the test examples ("eval") or the dev examples ("dev", for choosing
    templates without looking at the test set). `queries_kept` restricts them to some prompt ids (the
    ablations run on the held-out prompts only); prompt ids stay those of the full set, and random
    demonstrations are drawn in the same sequence, so prompt i holds the same test example and, for
    the same k, the same demonstrations in every random setting of a seed. `vectors` are the
    similarity space of retrieval settings (example id -> vector). Each `content_free` text, written
    in every field of the query, makes a content-free twin of every prompt (same demonstrations, same
    order) for contextual calibration: the columns hold where its tokens leave the prompt's.
    """
    data, split = task_split(data, task_cfg, prompt_cfg, task)
    n_classes = len(task_cfg["classes"])
    labels = data["label"].to_numpy()
    k = setting.get("k") or prompt_cfg["k"]
    k_key = "the setting's k" if setting.get("k") else "prompts.k"
    if k > len(split.pool):
        raise PromptError(f"{k_key}={k} is larger than the demonstration pool of task {task!r} ({len(split.pool)} examples)")
    balanced = setting["selection"] == "random" or setting.get("balanced", True)
    check_pool_choice(labels, split, task_cfg["classes"], k, k_key, balanced, task, describe_source(task, task_cfg), prompt_cfg)
    words = perturb.shown_label_words(
        setting["labels"], list(configured_label_words(task_cfg).values()), setting["label_symbols"], setting["label_pool"]
    )
    template = task_cfg["template"]
    rows = data.to_dicts()
    queries = getattr(split, part)
    token_ids = label_token_ids(tokenizer, template, words, fields(rows[queries[0]]))
    by_similarity = setting["selection"] != "random"
    if by_similarity:
        pool_ids = [rows[j]["example_id"] for j in split.pool]
        pool_matrix = unit_rows(np.stack(readers.rows_for(vectors or {}, pool_ids, "similarity vectors")))
    rng = np.random.default_rng(seed)
    swap = swap_partners(np.sort(queries_kept), labels[queries[np.sort(queries_kept)]]) if setting.get("query_swap") else {}
    columns: dict[str, list] = {name: [] for name in tables.PROMPTS.names}
    for prompt_id, query_index in enumerate(queries):
        # A query-swap setting keeps prompt i's demonstrations and asks another held-out prompt's query.
        i = queries[swap[prompt_id]] if prompt_id in swap else query_index
        kept = queries_kept is None or prompt_id in queries_kept
        if not by_similarity:
            chosen = sample_balanced(labels[split.pool], k, n_classes, rng)  # drawn for every prompt: same stream
        if not kept:
            continue
        if by_similarity:
            query = unit_rows(readers.rows_for(vectors, [rows[i]["example_id"]], "similarity vectors")[0])
            chosen = retrieval.top_k(
                pool_matrix @ query, labels[split.pool], k, n_classes, setting["selection"] == "similar", setting["balanced"]
            )
        demos = split.pool[chosen]
        if setting["order_seed"] is not None:
            demos = np.random.default_rng([seed, setting["order_seed"], prompt_id]).permutation(demos)
        shown = labels[demos]
        if setting["labels"] == "random":
            shown = np.random.default_rng([seed, 1, prompt_id]).integers(0, n_classes, len(demos))
        noise = [np.random.default_rng([seed, 2, prompt_id, j]) for j in range(len(demos) + 1)]
        demo_fields = [
            perturbed(rows[j], setting, noise[n + 1]) if setting["typo_target"] == "all" else fields(rows[j])
            for n, j in enumerate(demos)
        ]
        query = perturbed(rows[i], setting, noise[0])
        demos_shown = [(f, words[c]) for f, c in zip(demo_fields, shown)]
        demo_words, expected = [words[c] for c in shown], [token_ids[c] for c in shown]
        rendered = render(template, demos_shown, query)
        spans = tokenized(tokenizer, rendered, demo_words, expected, f"task {task!r} prompt {prompt_id}")
        twins = [tokenized(tokenizer, render(template, demos_shown, dict.fromkeys(query, text)), demo_words, expected,
                           f"task {task!r} prompt {prompt_id} with content-free query {text!r}")["input_ids"]
                 for text in content_free]
        starts = [shared_prefix(spans["input_ids"], twin) for twin in twins]
        row = {
            "prompt_id": prompt_id,
            "example_id": rows[i]["example_id"],
            "label": int(labels[i]),
            "demo_ids": [rows[j]["example_id"] for j in demos],
            "demo_labels": [int(c) for c in shown],
            "text": rendered.text,
            "label_token_ids": token_ids,
            **spans,
            "content_free": list(content_free) if content_free else None,
            "content_free_start": starts if content_free else None,
            "content_free_ids": [twin[start:] for twin, start in zip(twins, starts)] if content_free else None,
        }
        for name in columns:
            columns[name].append(row[name])
    lengths = [len(ids) for ids in columns["input_ids"]]
    log.info("task %s seed %d: %d prompts, tokens min %d mean %.0f max %d", task, seed, len(lengths), min(lengths), np.mean(lengths), max(lengths))
    return columns


def tokenized(tokenizer, rendered, label_words: list[str], label_ids: list[int], where: str) -> dict:
    """tokenize(), checked to hold each demonstration's label token where the spans say."""
    spans = tokenize(tokenizer, rendered, label_words)
    found = [spans["input_ids"][p] for p in spans["y_pos"]]
    if found != label_ids:
        raise PromptError(f"{where}: label tokens {found} differ from {label_ids} in context")
    return spans


def shared_prefix(ids: list[int], twin: list[int]) -> int:
    """How many leading tokens `twin` shares with `ids`, leaving it at least one of its own (the
    pass that gives its last-token logits)."""
    n = 0
    for a, b in zip(ids, twin):
        if a != b:
            break
        n += 1
    return min(n, len(twin) - 1)


def swap_partners(prompt_ids: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """prompt id -> the prompt id whose query replaces its own: the next one in id order (cyclic) with
    another gold label, or the next one when every prompt has the same label."""
    partners = {}
    n = len(prompt_ids)
    for j, pid in enumerate(prompt_ids):
        later = [(j + step) % n for step in range(1, n)]
        other = [m for m in later if labels[m] != labels[j]]
        partners[int(pid)] = int(prompt_ids[(other or later or [j])[0]])
    return partners


def prompt_set(
    data_path: str | Path, manifest_path: str | Path, task: str, task_cfg: dict, prompt_cfg: dict,
    setting: dict, seed: int, vectors_path: str | Path | None = None, heldout_cfg: dict | None = None,
    content_free: list[str] = (),
) -> dict:
    """The PROMPTS columns of one set, from the files its rule reads (build_prompts' arguments)."""
    data = readers.read_task_data(data_path)
    tokenizer = tokenizers.load_tokenizer(manifests.read_manifest(manifest_path), prompt_cfg["prepend_bos"])
    kept = heldout_prompt_ids(data, task_cfg, prompt_cfg, task, heldout_cfg) if setting["queries"] == "heldout" else None
    vectors = readers.retrieval_space(setting, vectors_path)
    return build_prompts(
        data, task_cfg, prompt_cfg, setting, seed, tokenizer, task, vectors=vectors, queries_kept=kept, content_free=content_free
    )


def set_from_snakemake(smk) -> dict:
    """prompt_set for the rule's prompt set; errors name the setting."""
    try:
        return prompt_set(
            smk.input.data, smk.input.manifest, smk.wildcards.task, smk.params.task, smk.params.prompts,
            smk.params.setting, int(smk.wildcards.seed), smk.input.get("vectors"), smk.params.heldout,
            smk.params.prompts["content_free"],
        )
    except (PromptError, SplitError) as err:
        raise type(err)(f"settings.{smk.wildcards.setting}: {err}") from err
