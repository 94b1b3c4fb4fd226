"""Ablation building blocks: retrieval by a known similarity, typo noise, label formats."""
from __future__ import annotations

import numpy as np
import pytest

from workflow_scripts.core.config import setting_defaults
from workflow_scripts.core.readers import MissingExamplesError
from workflow_scripts.core.split import task_split
from workflow_scripts.prompts import perturb, retrieval, sets

from .test_prompts_tokenize import PROMPT_CFG, TASK, toy_data

SIM = np.array([0.9, 0.1, 0.8, 0.7, 0.3, 0.95, 0.2, 0.5])
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def test_pure_top_k_takes_the_most_similar_with_the_best_last():
    chosen = retrieval.top_k(SIM, LABELS, 3, 2, most_similar=True, balanced=False)
    assert chosen.tolist() == [2, 0, 5]  # 0.8, 0.9, 0.95
    least = retrieval.top_k(SIM, LABELS, 3, 2, most_similar=False, balanced=False)
    assert least.tolist() == [4, 6, 1]  # 0.3, 0.2, 0.1: the least similar sits next to the query


def test_balanced_top_k_takes_the_best_of_each_class():
    chosen = retrieval.top_k(SIM, LABELS, 4, 2, most_similar=True, balanced=True)
    assert sorted(chosen.tolist()) == [0, 2, 5, 7]  # class 0: 0.9, 0.8; class 1: 0.95, 0.5
    assert chosen.tolist() == [7, 2, 0, 5]  # ascending similarity
    # an odd k gives the extra slot to the class with the most similar example (class 1: 0.95)
    odd = retrieval.top_k(SIM, LABELS, 3, 2, most_similar=True, balanced=True)
    assert sorted(odd.tolist()) == [0, 5, 7]
    least = retrieval.top_k(SIM, LABELS, 2, 2, most_similar=False, balanced=True)
    assert sorted(least.tolist()) == [1, 6]


def test_balanced_top_k_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        sim = rng.random(30)
        labels = rng.integers(0, 3, 30)
        chosen = retrieval.top_k(sim, labels, 6, 3, most_similar=True, balanced=True)
        for c in range(3):
            members = np.flatnonzero(labels == c)
            picked = [i for i in chosen if labels[i] == c]
            assert sorted(picked) == sorted(members[np.argsort(-sim[members])][: len(picked)].tolist())
        assert np.all(np.diff(sim[chosen]) >= 0)


def test_typos_are_deterministic_and_respect_the_rate():
    text = "the quick brown fox jumps over the lazy dog " * 50
    a = perturb.typos(text, 0.1, np.random.default_rng(3))
    assert a == perturb.typos(text, 0.1, np.random.default_rng(3))
    assert a != perturb.typos(text, 0.1, np.random.default_rng(4))
    assert perturb.typos(text, 0.0, np.random.default_rng(3)) == text
    n = 20000
    for rate in (0.02, 0.1, 0.3):
        plan = perturb.typo_plan(n, rate, np.random.default_rng(7))
        sd = np.sqrt(n * rate * (1 - rate))
        assert abs(len(plan) - n * rate) < 4 * sd
        ops = [op for _, op, _ in plan]
        assert all(abs(ops.count(op) / len(plan) - 1 / 3) < 0.05 for op in perturb.OPS)


def test_apply_typos_hand_computed():
    assert perturb.apply_typos("abcd", [(0, "swap", "x"), (2, "drop", "x")]) == "bad"
    assert perturb.apply_typos("abcd", [(1, "insert", "z")]) == "abzcd"
    assert perturb.apply_typos("abcd", [(3, "swap", "q")]) == "abcdq"  # nothing to swap with at the end
    assert perturb.apply_typos("abcd", [(0, "swap", "x"), (1, "drop", "x")]) == "bacd"  # the swap consumed b


def test_label_formats():
    words = ["bad", "okay", "good"]
    assert perturb.shown_label_words("configured", words, ["A", "B", "C"], ["apple", "river", "chair"]) == words
    permuted = perturb.shown_label_words("permuted", words, [], [])
    assert sorted(permuted) == sorted(words) and all(p != w for p, w in zip(permuted, words))
    assert perturb.shown_label_words("symbols", words, ["A", "B", "C", "D"], []) == ["A", "B", "C"]
    assert perturb.shown_label_words("words", words[:2], [], ["apple", "river", "chair"]) == ["apple", "river"]
    with pytest.raises(ValueError, match="needs 3 words"):
        perturb.shown_label_words("symbols", words, ["A", "B"], [])


# --- settings through build_prompts (SmolLM2's real tokenizer, toy reviews) ---------------------------


def build_with(tokenizer, setting: dict, **kwargs) -> dict:
    return sets.build_prompts(toy_data(), TASK, PROMPT_CFG, setting_defaults(setting), 7, tokenizer, "toy", **kwargs)


@pytest.fixture(scope="module")
def baseline(tokenizer) -> dict:
    return build_with(tokenizer, {})


def test_label_formats_keep_the_demonstrations_and_change_the_words(tokenizer, baseline):
    words = {"permuted": ["good", "bad"], "symbols": ["A", "B"], "words": ["apple", "river"]}
    for kind, expected in words.items():
        built = build_with(tokenizer, {"labels": kind})
        assert built["demo_ids"] == baseline["demo_ids"] and built["demo_labels"] == baseline["demo_labels"]
        for ids, y_pos, labels in zip(built["input_ids"], built["y_pos"], built["demo_labels"]):
            shown = [tokenizer.decode([ids[p]]).strip() for p in y_pos]
            assert shown == [expected[c] for c in labels]


def test_random_labels_keep_the_inputs_and_redraw_the_labels(tokenizer, baseline):
    built = build_with(tokenizer, {"labels": "random"})
    assert built["demo_ids"] == baseline["demo_ids"]
    flat_new = np.concatenate(built["demo_labels"])
    flat_old = np.concatenate(baseline["demo_labels"])
    assert 0.2 < np.mean(flat_new != flat_old) < 0.8  # about half differ for two classes


def test_order_permutes_the_same_demonstrations(tokenizer, baseline):
    built = build_with(tokenizer, {"order_seed": 1})
    assert all(sorted(a) == sorted(b) for a, b in zip(built["demo_ids"], baseline["demo_ids"]))
    assert sum(a != b for a, b in zip(built["demo_ids"], baseline["demo_ids"])) >= len(baseline["demo_ids"]) // 2


def test_typos_on_the_query_leave_the_demonstrations_alone(tokenizer, baseline):
    query_only = build_with(tokenizer, {"typo_rate": 0.2})
    everywhere = build_with(tokenizer, {"typo_rate": 0.2, "typo_target": "all"})
    changed = 0
    for old, new, all_ in zip(baseline["text"], query_only["text"], everywhere["text"]):
        cut = old.rindex("Review:")
        assert new[:cut] == old[:cut]  # demonstrations untouched
        assert all_[:cut] != old[:cut]
        assert new[cut:] == all_[all_.rindex("Review:"):]  # the same query noise either way
        changed += new[cut:] != old[cut:]
    assert changed >= len(baseline["text"]) - 1


def test_heldout_queries_keep_prompt_ids_and_demonstrations(tokenizer, baseline):
    kept = np.array([1, 4, 6])
    built = build_with(tokenizer, {"queries": "heldout"}, queries_kept=kept)
    assert built["prompt_id"] == [1, 4, 6]
    assert built["demo_ids"] == [baseline["demo_ids"][i] for i in kept]


def test_k_override(tokenizer):
    built = build_with(tokenizer, {"k": 2})
    assert all(len(d) == 2 for d in built["demo_ids"])


def test_retrieval_picks_the_most_similar_pool_examples(tokenizer):
    data = toy_data()
    rng = np.random.default_rng(0)
    vectors = {i: rng.normal(size=4) for i in data["example_id"]}
    built = build_with(tokenizer, {"selection": "similar", "balanced": False}, vectors=vectors)
    _, split = task_split(data, TASK, PROMPT_CFG, "toy")
    pool_ids = data["example_id"].to_numpy()[split.pool]

    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    for query, demos in zip(built["example_id"], built["demo_ids"]):
        sims = np.array([cos(vectors[query], vectors[p]) for p in pool_ids])
        best = pool_ids[np.argsort(-sims)[: PROMPT_CFG["k"]]]
        assert list(demos) == list(best[::-1])  # most similar last, next to the query
    with pytest.raises(MissingExamplesError, match="similarity vectors: no row for examples"):
        build_with(tokenizer, {"selection": "similar"}, vectors={})
