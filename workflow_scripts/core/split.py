"""Which examples play which part: test queries, dev queries and the demonstration pool of a task;
the select and held-out prompts of Table 2; the prompts the ablations read; demonstration draws.

Every stage that needs to know which examples are test queries or demonstrations asks this module,
so they all see the same split.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import polars as pl

log = logging.getLogger(__name__)


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
    labels: np.ndarray, n_classes: int, n_eval: int, n_dev: int, seed: int, task: str, pool_size: int = 0,
    class_names: list[str] | None = None,
) -> Split:
    """Class-balanced test and dev sets; the rest is the demonstration pool, capped at `pool_size`
    (class-balanced) when that is not 0, so per-example analyses of the pool stay affordable.
    A pool smaller than pool_size is logged as a warning."""
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
    got_pool = [len(p) for p in parts["pool"]]
    if pool_size and sum(got_pool) < pool_size:
        log.warning(pool_shortfall(task, pool_size, want_pool, got_pool, n_eval, n_dev, class_names or list(range(n_classes))))
    return Split(*(np.sort(np.concatenate(parts[p])) for p in ("eval", "dev", "pool")))


def pool_shortfall(
    task: str, pool_size: int, wanted: list[int], got: list[int], n_eval: int, n_dev: int, class_names: list
) -> str:
    """The warning for a pool smaller than prompts.pool_size: its counts per class, and why."""
    per_class = ", ".join(f"{name} {g} of {w}" for name, g, w in zip(class_names, got, wanted))
    return (
        f"task {task!r}: prompts.pool_size={pool_size} asks for a demonstration pool of {pool_size} examples, but "
        f"only {sum(got)} are left after the {n_eval} test (prompts.n_eval) and {n_dev} dev (prompts.n_dev) "
        f"examples (per class, available of requested: {per_class}); prompts draw their demonstrations from "
        f"these {sum(got)}. Add examples to the task file, lower prompts.n_eval, or lower prompts.pool_size "
        "(0 takes every example left)"
    )


def task_split(data: pl.DataFrame, task_cfg: dict, prompt_cfg: dict, task: str) -> tuple[pl.DataFrame, Split]:
    """The examples a task's prompts draw from (after prompts.max_chars) and their eval/dev/pool split."""
    if prompt_cfg["max_chars"]:
        chars = pl.col("text").str.len_chars() + pl.col("text_b").fill_null("").str.len_chars()
        data = data.filter(chars <= prompt_cfg["max_chars"])
    split = split_examples(
        data["label"].to_numpy(), len(task_cfg["classes"]), prompt_cfg["n_eval"], prompt_cfg["n_dev"],
        prompt_cfg["split_seed"], task, prompt_cfg["pool_size"], task_cfg["classes"],
    )
    return data, split


def task_examples(data: pl.DataFrame, task_cfg: dict, prompt_cfg: dict, task: str) -> pl.DataFrame:
    """The test queries and the demonstration pool of a task, with their part ("eval" or "pool"):
    every example a prompt can contain, so per-example tables (zero-shot, embeddings) cover them all."""
    data, split = task_split(data, task_cfg, prompt_cfg, task)
    return pl.concat([data[split.eval].with_columns(part=pl.lit("eval")), data[split.pool].with_columns(part=pl.lit("pool"))])


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


def check_pool_choice(
    labels: np.ndarray, split: Split, class_names: list[str], k: int, k_key: str, balanced: bool, task: str,
    source: str, prompt_cfg: dict,
) -> None:
    """Stop when k demonstrations leave the draw (nearly) no choice, so that the prompts would share
    one demonstration set and differ only in their query.

    The rule: class-balanced draws (random selection, balanced retrieval) take up to ceil(k / classes)
    examples of a class, so a class whose pool holds no more than that shows all of its pool examples
    in every prompt that draws that many; every class's pool must be larger. Plain top-k retrieval
    needs a pool larger than k.
    """
    n_classes = len(class_names)
    pool = np.bincount(labels[split.pool], minlength=n_classes)
    need = math.ceil(k / n_classes) + 1 if balanced else k + 1  # per class, or in all
    short = [class_names[c] for c in range(n_classes) if pool[c] < need] if balanced else []
    if (not balanced and len(split.pool) >= need) or (balanced and not short):
        return
    total = np.bincount(labels, minlength=n_classes)
    if balanced:
        problem = (
            f"{k_key}={k} draws up to {need - 1} demonstrations per class, but the pool holds "
            f"{_per_class(class_names, pool)}, so every prompt would show the same pool examples of class "
            f"{', '.join(short)}"
        )
        rule = f"each class needs more pool examples than k draws from it, here at least {need}"
        largest_k = (int(pool.min()) - 1) * n_classes
    else:
        problem = f"{k_key}={k} takes the top k of a pool of {len(split.pool)} examples, so every prompt would show the whole pool"
        rule = f"top-k retrieval needs a pool of more than k examples, here at least {need}"
        largest_k = len(split.pool) - 1
    kept = f" within prompts.max_chars={prompt_cfg['max_chars']}" if prompt_cfg.get("max_chars") else ""
    fixes = [f"add examples to {source}"]
    capped = per_class_counts(prompt_cfg["pool_size"], n_classes)
    if prompt_cfg["pool_size"] and (min(capped) < need if balanced else prompt_cfg["pool_size"] < need):
        fixes.append(f"raise prompts.pool_size to at least {need * n_classes if balanced else need}")
    n_eval = _largest_n_eval(total, prompt_cfg, need, balanced)
    if n_eval:
        fixes.append(f"lower prompts.n_eval to {n_eval} or fewer")
    if largest_k >= 1:
        fixes.append(f"lower {k_key} to {largest_k} or fewer")
    raise SplitError(
        f"task {task!r}: {problem}: the {prompt_cfg['n_eval']} prompts (prompts.n_eval) would share (nearly) one "
        f"demonstration set. The rule: {rule}. The pool is what the task's {len(labels)} examples{kept} "
        f"({_per_class(class_names, total)}) leave after {prompt_cfg['n_eval']} test (prompts.n_eval) and "
        f"{prompt_cfg['n_dev']} dev (prompts.n_dev) examples, capped at prompts.pool_size={prompt_cfg['pool_size']} "
        f"(0: no cap). To fix it, {', or '.join(fixes)}"
    )


def _per_class(class_names: list[str], counts: np.ndarray) -> str:
    return ", ".join(f"{int(n)} {name}" for name, n in zip(class_names, counts))


def _largest_n_eval(total: np.ndarray, prompt_cfg: dict, need: int, balanced: bool) -> int:
    """The largest prompts.n_eval below the current one whose pool has `need` examples of every class
    (balanced) or in all, or 0 if none has."""
    n_classes = len(total)
    dev = per_class_counts(prompt_cfg["n_dev"], n_classes)
    cap = per_class_counts(prompt_cfg["pool_size"], n_classes) if prompt_cfg["pool_size"] else [None] * n_classes
    for n_eval in range(prompt_cfg["n_eval"] - 1, 0, -1):
        left = [t - e - d for t, e, d in zip(total, per_class_counts(n_eval, n_classes), dev)]
        left = [a if c is None else min(a, c) for a, c in zip(left, cap)]
        if min(left) >= 1 and (min(left) >= need if balanced else sum(left) >= need):
            return n_eval
    return 0


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


def heldout_prompt_ids(data: pl.DataFrame, task_cfg: dict, prompt_cfg: dict, task: str, analysis_cfg: dict) -> np.ndarray:
    """Prompt ids of the prompts the ablations read: Table 2's held-out test prompts (the split
    select_heldout makes of the task's test queries), or analysis.ablation_prompts of them."""
    data, split = task_split(data, task_cfg, prompt_cfg, task)
    labels = data["label"].to_numpy()[split.eval]
    # analysis_cfg names the split's seed only when every study seed holds out its own examples.
    split_seed = analysis_cfg.get("split_seed", prompt_cfg["split_seed"])
    held = select_heldout(labels, analysis_cfg["n_select"], analysis_cfg["n_heldout"], split_seed)[1]
    return ablation_ids(held, labels[held], analysis_cfg["ablation_prompts"])
