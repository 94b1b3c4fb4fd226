"""ICL prompts: split a task, sample demonstrations, render the template, tokenize once with spans.

Later stages never re-tokenize: every position they need (each x_i span, each y_i label token,
the query span) is recorded here from the tokenizer's character offsets.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import config as config_mod
from . import layers, models, perturb, schemas
from . import retrieval as retrieval_mod
from .retrieval import per_class_counts

log = logging.getLogger(__name__)


class PromptError(ValueError):
    """Prompts that cannot be built as configured; the message names the key and the numbers."""


@dataclass(frozen=True)
class Split:
    eval: np.ndarray
    dev: np.ndarray
    pool: np.ndarray


def split_examples(
    labels: np.ndarray, n_classes: int, n_eval: int, n_dev: int, seed: int, task: str, pool_size: int = 0
) -> Split:
    """Class-balanced test and dev sets; the rest is the demonstration pool, capped at `pool_size`
    (class-balanced) when that is not 0, so per-example analyses of the pool stay affordable."""
    rng = np.random.default_rng(seed)
    want_eval = per_class_counts(n_eval, n_classes)
    want_dev = per_class_counts(n_dev, n_classes)
    want_pool = per_class_counts(pool_size, n_classes) if pool_size else [None] * n_classes
    parts: dict[str, list[np.ndarray]] = {"eval": [], "dev": [], "pool": []}
    for c in range(n_classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        need = want_eval[c] + want_dev[c]
        if len(members) <= need:
            raise PromptError(
                f"task {task!r}: class {c} has {len(members)} examples, but prompts.n_eval={n_eval} and "
                f"prompts.n_dev={n_dev} need {need} of them plus at least one for the demonstration pool"
            )
        parts["eval"].append(members[: want_eval[c]])
        parts["dev"].append(members[want_eval[c] : need])
        pool = members[need:]
        parts["pool"].append(pool if want_pool[c] is None else pool[: want_pool[c]])
    return Split(*(np.sort(np.concatenate(parts[p])) for p in ("eval", "dev", "pool")))


def sample_balanced(pool_labels: np.ndarray, k: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """k pool indices, as class-balanced as k allows (leftover slots go to random classes), shuffled."""
    counts = np.full(n_classes, k // n_classes)
    counts[rng.choice(n_classes, size=k % n_classes, replace=False)] += 1
    chosen = []
    for c in range(n_classes):
        members = np.flatnonzero(pool_labels == c)
        if counts[c] > len(members):
            raise PromptError(f"prompts.k={k} needs {counts[c]} demonstrations of class {c}, the pool has {len(members)}")
        chosen.append(rng.choice(members, size=counts[c], replace=False))
    return rng.permutation(np.concatenate(chosen))


@dataclass(frozen=True)
class Rendered:
    text: str
    x_chars: list[tuple[int, int]]  # each demonstration's input part
    y_chars: list[tuple[int, int]]  # each demonstration's label word
    query_char: int


def render(template: dict, demos: list[tuple[dict, str]], query: dict) -> Rendered:
    """Write demonstrations (fields, label word) and the query into one prompt, noting char spans."""
    text = template["prefix"]
    x_chars, y_chars = [], []
    for fields, word in demos:
        start = len(text)
        text += template["input"].format(**fields)
        x_chars.append((start, len(text)))
        before, after = template["output"].split("{label}")
        text += before
        y_chars.append((len(text), len(text) + len(word)))
        text += word + after + template["separator"]
    query_char = len(text)
    text += template["input"].format(**query)
    return Rendered(text, x_chars, y_chars, query_char)


def _token_at(offsets: np.ndarray, char: int) -> int:
    """The first token that ends after `char` (tokens may drop leading whitespace from offsets)."""
    real = offsets[:, 1] > offsets[:, 0]
    return int(np.flatnonzero(real & (offsets[:, 1] > char))[0])


def tokenize(tokenizer, rendered: Rendered, label_words: list[str]) -> dict:
    """Token ids and the token positions of every span; each label word must be exactly one token."""
    enc = tokenizer(rendered.text, return_offsets_mapping=True, add_special_tokens=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64)
    x_start, y_pos = [], []
    for (xs, _), (ys, ye), word in zip(rendered.x_chars, rendered.y_chars, label_words):
        overlapping = np.flatnonzero((offsets[:, 0] < ye) & (offsets[:, 1] > ys))
        pieces = [tokenizer.decode([int(ids[i])]) for i in overlapping]
        if len(overlapping) != 1 or pieces[0].strip() != word.strip():
            raise PromptError(
                f"label word {word!r} is not one token in context: it tokenizes as {pieces}; "
                "choose another word in the task's label_words (or change template.output)"
            )
        x_start.append(_token_at(offsets, xs))
        y_pos.append(int(overlapping[0]))
    return {
        "input_ids": ids.tolist(),
        "x_start": x_start,
        "x_end": list(y_pos),
        "y_pos": y_pos,
        "query_start": _token_at(offsets, rendered.query_char),
        "query_end": len(ids),
    }


def label_token_ids(tokenizer, template: dict, words: list[str], example: dict) -> list[int]:
    """Token id of each label word as it appears in context, checked to be one token and distinct."""
    ids = []
    for word in words:
        rendered = render(template, [(example, word)], example)
        spans = tokenize(tokenizer, rendered, [word])
        ids.append(spans["input_ids"][spans["y_pos"][0]])
    if len(set(ids)) != len(ids):
        raise PromptError(f"label words {words} map to the same token ids {ids}; they must be distinct")
    return ids


def fields(row) -> dict:
    fields = {"text": row.text}
    if row.text_b is not None and not pd.isna(row.text_b):
        fields["text_b"] = row.text_b
    return fields


def task_split(data: pd.DataFrame, task_cfg: dict, prompt_cfg: dict, task: str) -> tuple[pd.DataFrame, Split]:
    """The examples a task's prompts draw from (after prompts.max_chars) and their eval/dev/pool split.

    Every stage that needs to know which examples are test queries or demonstrations calls this,
    so they all see the same split.
    """
    if prompt_cfg["max_chars"]:
        data = data[data.text.str.len() + data.text_b.fillna("").str.len() <= prompt_cfg["max_chars"]]
    data = data.reset_index(drop=True)
    split = split_examples(
        data.label.to_numpy(), len(task_cfg["classes"]), prompt_cfg["n_eval"], prompt_cfg["n_dev"],
        prompt_cfg["split_seed"], task, prompt_cfg["pool_size"],
    )
    return data, split


def task_examples(data: pd.DataFrame, task_cfg: dict, prompt_cfg: dict, task: str) -> pd.DataFrame:
    """The test queries and the demonstration pool of a task, with their part ("eval" or "pool"):
    every example a prompt can contain, so per-example tables (zero-shot, embeddings) cover them all."""
    data, split = task_split(data, task_cfg, prompt_cfg, task)
    parts = [data.iloc[split.eval].assign(part="eval"), data.iloc[split.pool].assign(part="pool")]
    return pd.concat(parts, ignore_index=True)


def unit_vectors(vectors: dict[str, np.ndarray], ids: list[str], where: str) -> np.ndarray:
    """Rows of unit length for `ids` (the similarity space of retrieval), with an error naming the table."""
    missing = [i for i in ids if i not in vectors]
    if missing:
        raise PromptError(f"{where}: no vector for examples {missing[:3]}; it was built from a different split")
    matrix = np.stack([vectors[i] for i in ids]).astype(np.float64)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def perturbed(row, setting: dict, rng: np.random.Generator) -> dict:
    """An example's template fields with typo noise at the setting's rate (none at rate 0)."""
    values = fields(row)
    if not setting["typo_rate"]:
        return values
    return {name: perturb.typos(text, setting["typo_rate"], rng) for name, text in values.items()}


def build_prompts(
    data: pd.DataFrame, task_cfg: dict, prompt_cfg: dict, setting: dict, seed: int, tokenizer, task: str,
    part: str = "eval", vectors: dict[str, np.ndarray] | None = None, queries_kept: np.ndarray | None = None,
) -> dict:
    """All prompts of one task x seed x setting, as columns of the PROMPTS schema.

    `part` picks the queries: the test examples ("eval") or the dev examples ("dev", for choosing
    templates without looking at the test set). `queries_kept` restricts them to some prompt ids (the
    ablations run on the held-out prompts only); prompt ids stay those of the full set, and random
    demonstrations are drawn in the same sequence, so prompt i holds the same test example and, for
    the same k, the same demonstrations in every random setting of a seed. `vectors` are the
    similarity space of retrieval settings (example id -> vector).
    """
    data, split = task_split(data, task_cfg, prompt_cfg, task)
    n_classes = len(task_cfg["classes"])
    labels = data.label.to_numpy()
    k = setting.get("k") or prompt_cfg["k"]
    if k > len(split.pool):
        key = "the setting's k" if setting.get("k") else "prompts.k"
        raise PromptError(f"{key}={k} is larger than the demonstration pool of task {task!r} ({len(split.pool)} examples)")
    words = perturb.label_words(
        setting["labels"], list(config_mod.label_words(task_cfg).values()), setting["label_symbols"], setting["label_pool"]
    )
    template = task_cfg["template"]
    rows = list(data.itertuples())
    queries = getattr(split, part)
    token_ids = label_token_ids(tokenizer, template, words, fields(rows[queries[0]]))
    retrieval = setting["selection"] != "random"
    if retrieval:
        pool_ids = [rows[j].example_id for j in split.pool]
        pool_matrix = unit_vectors(vectors or {}, pool_ids, "similarity vectors")
    rng = np.random.default_rng(seed)
    columns: dict[str, list] = {name: [] for name in schemas.PROMPTS.names}
    for prompt_id, i in enumerate(queries):
        kept = queries_kept is None or prompt_id in queries_kept
        if not retrieval:
            chosen = sample_balanced(labels[split.pool], k, n_classes, rng)  # drawn for every prompt: same stream
        if not kept:
            continue
        if retrieval:
            query = unit_vectors(vectors, [rows[i].example_id], "similarity vectors")[0]
            chosen = retrieval_mod.top_k(
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
        rendered = render(template, [(f, words[c]) for f, c in zip(demo_fields, shown)], perturbed(rows[i], setting, noise[0]))
        demo_words = [words[c] for c in shown]
        spans = tokenize(tokenizer, rendered, demo_words)
        found = [spans["input_ids"][p] for p in spans["y_pos"]]
        expected = [token_ids[c] for c in shown]
        if found != expected:
            raise PromptError(f"task {task!r} prompt {prompt_id}: label tokens {found} differ from {expected} in context")
        row = {
            "prompt_id": prompt_id,
            "example_id": rows[i].example_id,
            "label": int(labels[i]),
            "demo_ids": [rows[j].example_id for j in demos],
            "demo_labels": [int(c) for c in shown],
            "text": rendered.text,
            "label_token_ids": token_ids,
            **spans,
        }
        for name in columns:
            columns[name].append(row[name])
    lengths = [len(ids) for ids in columns["input_ids"]]
    log.info("task %s seed %d: %d prompts, tokens min %d mean %.0f max %d", task, seed, len(lengths), min(lengths), np.mean(lengths), max(lengths))
    return columns


def similarity_vectors(setting: dict, path: str | Path | None) -> dict[str, np.ndarray] | None:
    """The retrieval space of a setting: encoder embeddings, or the model's hidden state at one layer."""
    if setting["selection"] == "random":
        return None
    from . import encoder, zero_shot

    if setting["similarity"] == "encoder":
        return encoder.read_embeddings(path)
    hidden = zero_shot.read_zero_shot(path).hidden
    layer = layers.resolve(setting["hidden_layer"], hidden.iloc[0].shape[0], "settings.*.hidden_layer")
    return {i: h[layer] for i, h in hidden.items()}


def heldout_ids(data: pd.DataFrame, task_cfg: dict, prompt_cfg: dict, task: str, heldout_cfg: dict) -> np.ndarray:
    """Prompt ids of Table 2's held-out prompts (the same split heldout.py makes), or the
    analysis.ablation_prompts of them that heldout.ablation_ids picks when that is set."""
    from .heldout import ablation_ids, select_heldout

    data, split = task_split(data, task_cfg, prompt_cfg, task)
    labels = data.label.to_numpy()[split.eval]
    held = select_heldout(labels, heldout_cfg["n_select"], heldout_cfg["n_heldout"], prompt_cfg["split_seed"])[1]
    return ablation_ids(held, labels[held], heldout_cfg["ablation_prompts"])


def write_prompts(
    data_path: str | Path, manifest_path: str | Path, task: str, task_cfg: dict, prompt_cfg: dict,
    setting: dict, seed: int, out: str | Path, vectors_path: str | Path | None = None, heldout_cfg: dict | None = None,
) -> None:
    data = schemas.read_table(data_path, schemas.TASK_DATA).to_pandas()
    tokenizer = models.load_tokenizer(models.read_manifest(manifest_path))
    kept = heldout_ids(data, task_cfg, prompt_cfg, task, heldout_cfg) if setting["queries"] == "heldout" else None
    vectors = similarity_vectors(setting, vectors_path)
    columns = build_prompts(data, task_cfg, prompt_cfg, setting, seed, tokenizer, task, vectors=vectors, queries_kept=kept)
    schemas.write_table(columns, schemas.PROMPTS, out)


def from_snakemake(smk) -> None:
    try:
        write_prompts(
            smk.input.data, smk.input.manifest, smk.wildcards.task, smk.params.task, smk.params.prompts,
            smk.params.setting, int(smk.wildcards.seed), smk.output[0], smk.input.get("vectors"), smk.params.heldout,
        )
    except PromptError as err:
        raise PromptError(f"settings.{smk.wildcards.setting}: {err}") from err
