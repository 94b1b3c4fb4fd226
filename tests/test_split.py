"""Which examples play which part: the task split, balanced demonstration draws, the select/held-out split."""
from __future__ import annotations

import numpy as np
import pytest

from workflow_scripts.core import split as sp
from workflow_scripts.core.split import SplitError


@pytest.mark.parametrize("total,n_classes", [(10, 3), (2, 3), (9, 3), (0, 2), (7, 7), (101, 4)])
def test_per_class_counts(total, n_classes):
    counts = sp.per_class_counts(total, n_classes)
    assert len(counts) == n_classes
    assert sum(counts) == total
    assert max(counts) - min(counts) <= 1
    assert counts == sorted(counts, reverse=True)  # the first classes take the remainder


def test_per_class_counts_hand():
    assert sp.per_class_counts(10, 3) == [4, 3, 3]
    assert sp.per_class_counts(2, 3) == [1, 1, 0]


def labels_with(counts: list[int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))


def test_split_examples_partition_and_balance():
    labels = labels_with([30, 25, 20])
    split = sp.split_examples(labels, 3, n_eval=10, n_dev=5, seed=7, task="t")
    parts = [set(split.eval.tolist()), set(split.dev.tolist()), set(split.pool.tolist())]
    assert sum(map(len, parts)) == len(labels)
    assert set().union(*parts) == set(range(len(labels)))
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert np.bincount(labels[split.eval], minlength=3).tolist() == [4, 3, 3]
    assert np.bincount(labels[split.dev], minlength=3).tolist() == [2, 2, 1]
    assert np.bincount(labels[split.pool], minlength=3).tolist() == [24, 20, 16]
    for part in (split.eval, split.dev, split.pool):
        assert np.all(np.diff(part) > 0)  # sorted, no duplicates


def test_split_examples_is_seeded():
    labels = labels_with([40, 40])
    a = sp.split_examples(labels, 2, 10, 4, seed=3, task="t")
    b = sp.split_examples(labels, 2, 10, 4, seed=3, task="t")
    c = sp.split_examples(labels, 2, 10, 4, seed=4, task="t")
    for x, y in zip((a.eval, a.dev, a.pool), (b.eval, b.dev, b.pool)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.eval, c.eval)


def test_split_examples_no_dev():
    labels = labels_with([5, 5])
    split = sp.split_examples(labels, 2, 4, 0, seed=0, task="t")
    assert len(split.dev) == 0 and len(split.eval) == 4 and len(split.pool) == 6


@pytest.mark.parametrize("count", [3, 4])
def test_split_examples_too_few(count):
    # class 1 needs 2 eval + 2 dev and one left for the pool
    labels = labels_with([20, count])
    with pytest.raises(SplitError) as info:
        sp.split_examples(labels, 2, n_eval=4, n_dev=4, seed=0, task="reviews")
    msg = str(info.value)
    assert "prompts.n_eval=4" in msg and "prompts.n_dev=4" in msg
    assert f"has {count} examples" in msg and "'reviews'" in msg and "class 1" in msg


def test_pool_size_caps_the_pool_class_balanced_and_leaves_eval_alone():
    labels = labels_with([30, 25, 20])
    full = sp.split_examples(labels, 3, n_eval=10, n_dev=5, seed=7, task="t")
    capped = sp.split_examples(labels, 3, n_eval=10, n_dev=5, seed=7, task="t", pool_size=7)
    np.testing.assert_array_equal(full.eval, capped.eval)
    np.testing.assert_array_equal(full.dev, capped.dev)
    assert np.bincount(labels[capped.pool], minlength=3).tolist() == [3, 2, 2]
    assert set(capped.pool.tolist()) <= set(full.pool.tolist())


def test_split_examples_exactly_enough():
    labels = labels_with([20, 5])
    split = sp.split_examples(labels, 2, n_eval=4, n_dev=4, seed=0, task="t")
    assert np.bincount(labels[split.pool]).tolist() == [16, 1]


@pytest.mark.parametrize("k,n_classes", [(7, 3), (8, 2), (2, 3), (9, 3)])
def test_sample_balanced(k, n_classes):
    pool_labels = labels_with([6] * n_classes, seed=k)
    for seed in range(10):
        idx = sp.sample_balanced(pool_labels, k, n_classes, np.random.default_rng(seed))
        assert len(idx) == k
        assert len(set(idx.tolist())) == k
        assert idx.min() >= 0 and idx.max() < len(pool_labels)
        counts = np.bincount(pool_labels[idx], minlength=n_classes)
        assert counts.max() - counts.min() <= 1
        assert counts.min() == k // n_classes


def test_sample_balanced_seeded_and_varied():
    pool_labels = labels_with([10, 10, 10])
    a = sp.sample_balanced(pool_labels, 6, 3, np.random.default_rng(1))
    b = sp.sample_balanced(pool_labels, 6, 3, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    draws = {tuple(sp.sample_balanced(pool_labels, 6, 3, np.random.default_rng(s))) for s in range(5)}
    assert len(draws) > 1


def test_sample_balanced_leftover_slots_go_to_random_classes():
    pool_labels = labels_with([10, 10, 10])
    extra = np.zeros(3, dtype=int)
    for s in range(60):
        idx = sp.sample_balanced(pool_labels, 4, 3, np.random.default_rng(s))
        extra[np.bincount(pool_labels[idx], minlength=3).argmax()] += 1
    assert (extra > 0).all()  # the slot of k % n_classes is not always class 0


def test_sample_balanced_k_too_large_for_a_class():
    pool_labels = np.array([0, 0, 0, 1, 1, 2])
    with pytest.raises(SplitError) as info:
        sp.sample_balanced(pool_labels, 6, 3, np.random.default_rng(0))
    msg = str(info.value)
    assert "prompts.k=6" in msg and "class 2" in msg and "pool has 1" in msg


@pytest.mark.parametrize("counts,n_select,n_heldout", [([30, 30], 24, 20), ([20, 20, 21], 30, 30), ([5, 9], 7, 7)])
def test_select_and_heldout_are_disjoint_sized_and_stratified(counts, n_select, n_heldout):
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(len(counts)), counts))
    select, held = sp.select_heldout(labels, n_select, n_heldout, seed=3)
    assert len(select) == n_select and len(held) == n_heldout
    assert not set(select) & set(held)
    for part in (select, held):
        expected = np.asarray(counts) / sum(counts) * len(part)
        assert np.all(np.abs(np.bincount(labels[part], minlength=len(counts)) - expected) <= 1.5)
    again = sp.select_heldout(labels, n_select, n_heldout, seed=3)
    np.testing.assert_array_equal(select, again[0])
    assert not np.array_equal(select, sp.select_heldout(labels, n_select, n_heldout, seed=4)[0])


def test_ablation_subset_is_class_balanced_even_when_ids_are_sorted_by_label():
    ids = np.arange(40)
    labels = np.repeat([0, 1], 20)  # a data file sorted by label
    chosen = sp.ablation_ids(ids[::-1], labels[::-1], 10)
    assert np.bincount(labels[chosen]).tolist() == [5, 5]
    assert chosen.tolist() == [0, 1, 2, 3, 4, 20, 21, 22, 23, 24]
    np.testing.assert_array_equal(sp.ablation_ids(ids, labels, 0), ids)


def test_select_heldout_too_large_names_the_keys():
    with pytest.raises(sp.SplitError, match=r"'analysis.n_select'=8 and 'analysis.n_heldout'=5 need 13 prompts; the set has 12"):
        sp.select_heldout(np.zeros(12, dtype=int), 8, 5, seed=0)
