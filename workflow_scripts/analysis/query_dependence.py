"""Does a head's kernel weight depend on the query? K(x_test, x_i) must; a positional or label-word
head's weights do not.

Two measures per head and kernel reading, from normalized weights w_i = a_i / sum_j a_j:
  r2_slot, r2_slot_label  the share of the weights' variance over (prompt, demonstration) pairs that
                          the demonstration's slot, or its slot and label word, explain (1 = the
                          weights are a fixed slot or slot x label profile, whatever the query)
  query swap              the same demonstrations with another held-out query (a setting with
                          query_swap: true): how far the weights move (total variation distance,
                          0 = not at all) and how often the head's vote changes, beside how often the
                          ICL prediction changes
"""
from __future__ import annotations

import numpy as np

from workflow_scripts.core.kernels import kernel_vote


def normalized(weights: np.ndarray) -> np.ndarray:
    """Weights over the demonstrations (last axis) divided by their sum (zero sums stay zero)."""
    total = weights.sum(axis=-1, keepdims=True)
    return np.divide(weights, total, out=np.zeros_like(weights, dtype=np.float64), where=total > 0)


def explained_share(weights: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """R^2 of group means: 1 - within-group / total sum of squares of `weights` (prompts, ..., k) over
    (prompt, demonstration) pairs, with `groups` (prompts, k) the group of each pair; nan where the
    weights do not vary."""
    w = np.moveaxis(np.asarray(weights, dtype=np.float64), -1, 1)  # (prompts, k, ...)
    flat_groups = np.asarray(groups).ravel()
    values = w.reshape(-1, *w.shape[2:])
    total = ((values - values.mean(axis=0)) ** 2).sum(axis=0)
    ids, index = np.unique(flat_groups, return_inverse=True)
    sums = np.zeros((len(ids), *values.shape[1:]))
    np.add.at(sums, index, values)
    counts = np.bincount(index).reshape(-1, *([1] * (values.ndim - 1)))
    within = (values**2).sum(axis=0) - (sums**2 / counts).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 1e-15, 1 - within / total, np.nan)


def slot_groups(demo_labels: np.ndarray, by_label: bool) -> np.ndarray:
    """Each (prompt, demonstration) pair's slot, or slot and label word, as one group id: (prompts, k)."""
    demo_labels = np.asarray(demo_labels)
    slots = np.broadcast_to(np.arange(demo_labels.shape[1]), demo_labels.shape)
    return slots * (demo_labels.max() + 1) + demo_labels if by_label else slots


def weight_r2(weights: np.ndarray, demo_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(r2_slot, r2_slot_label) per head of `weights` (prompts, layers, heads, k)."""
    w = normalized(weights)
    return explained_share(w, slot_groups(demo_labels, False)), explained_share(w, slot_groups(demo_labels, True))


def swap_shift(original: np.ndarray, swapped: np.ndarray) -> np.ndarray:
    """Mean total variation distance between the normalized weights of the same demonstrations under
    two queries: (prompts, ..., k) pairs -> (...)."""
    return 0.5 * np.abs(normalized(original) - normalized(swapped)).sum(axis=-1).mean(axis=0)


def swap_table(
    original: tuple[list[dict], dict[str, np.ndarray]], swapped: tuple[list[dict], dict[str, np.ndarray]], n_classes: int,
) -> dict[str, list]:
    """Columns of QUERY_SWAP from both prompt sets' rows and kernel weights (readers.kernel_weights),
    paired by prompt id: the swapped set's prompts are a subset of the original's, with the same
    demonstrations."""
    by_id = {p["prompt_id"]: i for i, p in enumerate(original[0])}
    rows, weights = swapped
    missing = [p["prompt_id"] for p in rows if p["prompt_id"] not in by_id]
    if missing:
        raise ValueError(f"the query-swap prompts {missing[:3]} are not in the setting they swap against")
    pair = np.array([by_id[p["prompt_id"]] for p in rows])
    for p, i in zip(rows, pair):
        if list(p["demo_ids"]) != list(original[0][i]["demo_ids"]):
            raise ValueError(f"prompt {p['prompt_id']}: the query-swap setting has other demonstrations; both must draw them at random with the same k")
    demo_labels = np.stack([np.asarray(p["demo_labels"]) for p in rows])
    icl_change = float(np.mean([p["prediction"] != original[0][i]["prediction"] for p, i in zip(rows, pair)]))
    columns: dict[str, list] = {name: [] for name in ("layer", "head", "kernel", "weight_shift", "vote_change", "icl_change", "n_prompts")}
    for name, swapped_w in weights.items():
        original_w = original[1][name][pair]
        shift = swap_shift(original_w, swapped_w)
        votes = [kernel_vote(w, demo_labels[:, None, None, :], n_classes) for w in (original_w, swapped_w)]
        change = (votes[0] != votes[1]).mean(axis=0)
        layer, head = np.meshgrid(*map(np.arange, shift.shape), indexing="ij")
        columns["layer"] += layer.ravel().tolist()
        columns["head"] += head.ravel().tolist()
        columns["kernel"] += [name] * shift.size
        columns["weight_shift"] += shift.ravel().tolist()
        columns["vote_change"] += change.ravel().tolist()
        columns["icl_change"] += [icl_change] * shift.size
        columns["n_prompts"] += [len(rows)] * shift.size
    return columns
