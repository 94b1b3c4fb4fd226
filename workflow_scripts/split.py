"""Which examples play which part: test queries, dev queries and the demonstration pool of a task;
the select and held-out prompts of Table 2; the prompts the ablations read; demonstration draws.

Every stage that needs to know which examples are test queries or demonstrations asks this module,
so they all see the same split.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


class SplitError(ValueError):
    """A split the configured sizes cannot make; the message names the config keys and the counts."""


@dataclass(frozen=True)
class Split:
    eval: np.ndarray
    dev: np.ndarray
    pool: np.ndarray


def per_class_counts(total: int, n_classes: int) -> list[int]:
    """Split `total` over classes as evenly as possible (the first classes take the remainder)."""
    return [total // n_classes + (c < total % n_classes) for c in range(n_classes)]


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
            raise SplitError(
                f"task {task!r}: class {c} has {len(members)} examples, but prompts.n_eval={n_eval} and "
                f"prompts.n_dev={n_dev} need {need} of them plus at least one for the demonstration pool"
            )
        parts["eval"].append(members[: want_eval[c]])
        parts["dev"].append(members[want_eval[c] : need])
        pool = members[need:]
        parts["pool"].append(pool if want_pool[c] is None else pool[: want_pool[c]])
    return Split(*(np.sort(np.concatenate(parts[p])) for p in ("eval", "dev", "pool")))


def task_split(data: pd.DataFrame, task_cfg: dict, prompt_cfg: dict, task: str) -> tuple[pd.DataFrame, Split]:
    """The examples a task's prompts draw from (after prompts.max_chars) and their eval/dev/pool split."""
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


def sample_balanced(pool_labels: np.ndarray, k: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """k pool indices, as class-balanced as k allows (leftover slots go to random classes), shuffled."""
    counts = np.full(n_classes, k // n_classes)
    counts[rng.choice(n_classes, size=k % n_classes, replace=False)] += 1
    chosen = []
    for c in range(n_classes):
        members = np.flatnonzero(pool_labels == c)
        if counts[c] > len(members):
            raise SplitError(f"prompts.k={k} needs {counts[c]} demonstrations of class {c}, the pool has {len(members)}")
        chosen.append(rng.choice(members, size=counts[c], replace=False))
    return rng.permutation(np.concatenate(chosen))


def select_heldout(labels: np.ndarray, n_select: int, n_heldout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, label-stratified index sets of sizes n_select and n_heldout (sorted): Table 2 chooses
    heads on the first and scores them on the second."""
    n = len(labels)
    if n_select + n_heldout > n:
        raise SplitError(
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


def heldout_prompt_ids(data: pd.DataFrame, task_cfg: dict, prompt_cfg: dict, task: str, analysis_cfg: dict) -> np.ndarray:
    """Prompt ids of the prompts the ablations read: Table 2's held-out test prompts (the split
    select_heldout makes of the task's test queries), or analysis.ablation_prompts of them."""
    data, split = task_split(data, task_cfg, prompt_cfg, task)
    labels = data.label.to_numpy()[split.eval]
    # analysis_cfg names the split's seed only when every study seed holds out its own examples.
    split_seed = analysis_cfg.get("split_seed", prompt_cfg["split_seed"])
    held = select_heldout(labels, analysis_cfg["n_select"], analysis_cfg["n_heldout"], split_seed)[1]
    return ablation_ids(held, labels[held], analysis_cfg["ablation_prompts"])
