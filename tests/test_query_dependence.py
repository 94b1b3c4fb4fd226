"""Query dependence of a head's weights (query_dependence.py) against hand computations: R^2 on slot and
slot x label word, and the query swap's weight shift and vote change."""
from __future__ import annotations

import numpy as np
import pytest

from workflow_scripts.analysis import query_dependence as qd
from workflow_scripts.prompts.sets import swap_partners


def hand_r2(w: np.ndarray, groups: np.ndarray) -> float:
    values, keys = w.ravel(), groups.ravel()
    total = sum((v - values.mean()) ** 2 for v in values)
    within = 0.0
    for g in set(keys.tolist()):
        members = values[keys == g]
        within += sum((v - members.mean()) ** 2 for v in members)
    return 1 - within / total


def test_r2_against_a_loop_and_a_planted_positional_head():
    rng = np.random.default_rng(0)
    demo_labels = np.array([rng.permutation([0, 0, 1, 1]) for _ in range(30)])
    raw = rng.random((30, 2, 3, 4))  # prompts x layers x heads x k
    profile = np.array([0.1, 0.2, 0.3, 0.4])
    raw[:, 0, 0] = profile * rng.uniform(0.5, 2.0, size=(30, 1))  # a slot profile, whatever the query (any scale)
    label_head = np.where(demo_labels == 1, 3.0, 1.0) * profile  # slot x label word, no query
    raw[:, 1, 2] = label_head
    slot, slot_label = qd.weight_r2(raw, demo_labels)
    norm = raw / raw.sum(axis=-1, keepdims=True)
    for layer in range(2):
        for head in range(3):
            w = norm[:, layer, head]
            assert slot[layer, head] == pytest.approx(hand_r2(w, qd.slot_groups(demo_labels, False)))
            assert slot_label[layer, head] == pytest.approx(hand_r2(w, qd.slot_groups(demo_labels, True)))
    assert slot[0, 0] == pytest.approx(1.0) and slot_label[0, 0] == pytest.approx(1.0)
    # normalizing couples a weight to the other demonstrations' labels, so a slot x label head is near 1, not at 1
    assert slot[1, 2] < 0.9 and slot_label[1, 2] > 0.95
    assert slot[1, 0] < 0.5  # random weights: slot explains little


def test_swap_shift_and_partners():
    a = np.array([[[1.0, 1.0, 2.0]], [[1.0, 0.0, 0.0]]])  # prompts x heads x k
    b = np.array([[[2.0, 2.0, 4.0]], [[0.0, 0.0, 1.0]]])
    # prompt 0: same normalized weights (0); prompt 1: disjoint (1)
    assert qd.swap_shift(a, b).tolist() == [0.5]
    partners = swap_partners(np.array([3, 5, 8, 9]), np.array([0, 0, 1, 1]))
    assert partners == {3: 8, 5: 8, 8: 3, 9: 3}  # the next prompt (cyclic) with another gold label
    assert swap_partners(np.array([1, 2]), np.array([0, 0])) == {1: 2, 2: 1}


def test_swap_table_pairs_prompts_and_counts_vote_changes():
    def rows(predictions, demo_ids):
        return [{"prompt_id": i, "demo_ids": d, "demo_labels": [0, 1], "prediction": p}
                for i, (p, d) in enumerate(zip(predictions, demo_ids))]
    ids = [["a", "b"], ["c", "d"]]
    original = (rows([0, 1], ids), {"max": np.array([[[[3.0, 1.0]]], [[[1.0, 3.0]]]])})
    swapped = (rows([0, 0], ids), {"max": np.array([[[[1.0, 3.0]]], [[[1.0, 3.0]]]])})
    table = qd.swap_table(original, swapped, 2)
    assert table["weight_shift"] == [pytest.approx(0.25)]  # (0.5 + 0) / 2
    assert table["vote_change"] == [0.5] and table["icl_change"] == [0.5]
    with pytest.raises(ValueError, match="other demonstrations"):
        qd.swap_table(original, (rows([0, 0], [["a", "b"], ["x", "d"]]), swapped[1]), 2)
