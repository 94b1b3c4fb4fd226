"""Section 5.3: per-head Pearson correlation of kernel weights with prediction similarity."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from workflow_scripts.analysis import similarity as sim
from workflow_scripts.core.kernels import ATTENTION_KERNELS
from workflow_scripts.model import loading

from .test_reconstruction import C, H, L, loop_weights, synthetic_set

VOCAB = 40


def zero_shot_probs(prompts, seed: int = 0, k: int = 6) -> pl.DataFrame:
    """A random zero-shot label distribution and a full next-token distribution over VOCAB tokens
    (`full`, with its top k stored as the zero-shot table stores it) for every query and demonstration."""
    rng = np.random.default_rng(seed)
    ids = sorted(set(prompts.column("example_id").to_pylist()) | {d for row in prompts.column("demo_ids").to_pylist() for d in row})
    full = rng.dirichlet(np.full(VOCAB, 0.3), size=len(ids))
    top = np.argsort(-full, axis=1)[:, :k]
    return pl.DataFrame({
        "example_id": ids, "probs": list(rng.dirichlet(np.ones(C), size=len(ids))), "full": list(full),
        "next_ids": [t.astype(np.int32) for t in top], "next_probs": [f[t] for f, t in zip(full, top)],
        "next_rest": [1 - f[t].sum() for f, t in zip(full, top)],
    })


def row_of(frame: pl.DataFrame, example_id: str) -> dict:
    """One example's row, its list columns as numpy arrays (the test's own reading of the table)."""
    row = frame.row(by_predicate=pl.col("example_id") == example_id, named=True)
    return {name: np.asarray(value) if isinstance(value, list) else value for name, value in row.items()}


def test_prediction_similarity_is_a_dot_product_per_demo():
    query = np.array([0.7, 0.2, 0.1])
    demos = np.array([[1.0, 0, 0], [0, 0.5, 0.5], [0.2, 0.3, 0.5]])
    np.testing.assert_allclose(sim.prediction_similarity(query, demos), [0.7, 0.15, 0.25])


def sparse_dot(a, b) -> float:
    """The dot product of two stored top-k lists, by a dictionary (the test's own reading)."""
    first = dict(zip(a["next_ids"].tolist(), a["next_probs"]))
    return float(sum(first.get(t, 0.0) * q for t, q in zip(b["next_ids"].tolist(), b["next_probs"])))


@pytest.mark.parametrize("similarity", sim.SIMILARITIES)
def test_head_correlations_against_corrcoef_over_all_pairs(similarity):
    prompts, shards, truth = synthetic_set(n_prompts=10, seed=2)
    probs = zero_shot_probs(prompts)
    by_id = dict(zip(probs["example_id"], (np.asarray(p) for p in probs["probs"].to_list())))
    got = pl.DataFrame(sim.head_correlations(prompts, shards, by_id, sim.top_k_of(probs)))
    assert len(got) == L * H * len(ATTENTION_KERNELS) * len(sim.SIMILARITIES)
    got = got.filter(pl.col("similarity") == similarity)
    rows = prompts.to_pylist()
    for kernel in ATTENTION_KERNELS:
        weights, sims = [], []
        for p, row in zip(truth, rows):
            weights.append(loop_weights(p["att"], p["x_start"], p["y_pos"])[kernel])  # (L, H, k)
            query = row_of(probs, row["example_id"])
            if similarity == "label_words":
                sims.append([float(np.dot(query["probs"], row_of(probs, d)["probs"])) for d in row["demo_ids"]])
            else:
                sims.append([sparse_dot(query, row_of(probs, d)) for d in row["demo_ids"]])
        weights = np.concatenate(weights, axis=-1)
        sims = np.concatenate(sims)
        for layer in range(L):
            for head in range(H):
                expected = np.corrcoef(weights[layer, head], sims)[0, 1]
                cell = got.row(by_predicate=(pl.col("kernel") == kernel) & (pl.col("layer") == layer) & (pl.col("head") == head),
                               named=True)
                assert cell["pearson"] == pytest.approx(expected, abs=1e-6)  # attention is read as float32
                assert cell["n_pairs"] == len(sims)


def test_next_token_similarity_is_within_its_bound_of_the_full_dot_product():
    prompts, _, _ = synthetic_set(n_prompts=6, seed=4)
    for k, exact in ((6, False), (VOCAB, True)):
        probs = zero_shot_probs(prompts, seed=1, k=k)
        tops = sim.top_k_of(probs)
        gaps = []
        ids = probs["example_id"].to_list()
        for a in ids[:12]:
            for b in ids[12:24]:
                full = float(row_of(probs, a)["full"] @ row_of(probs, b)["full"])
                got = sim.next_token_similarity(tops[a], tops[b])
                assert got <= full + 1e-12
                assert full - got <= sim.truncation_bound(tops[a], tops[b]) + 1e-12
                gaps.append(full - got)
        assert (max(gaps) < 1e-12) == exact  # k = vocabulary: the dot product itself


def test_a_missing_zero_shot_row_names_the_table():
    prompts, shards, _ = synthetic_set(n_prompts=3)
    probs = zero_shot_probs(prompts).filter(pl.col("example_id") != "t-d1-2")
    by_id = dict(zip(probs["example_id"], probs["probs"].to_list()))
    with pytest.raises(ValueError, match=r"zs\.parquet: no row for examples \['t-d1-2'\]"):
        sim.head_correlations(prompts, shards, by_id, sim.top_k_of(probs), "zs.parquet")


def test_the_zero_shot_pass_stores_the_models_full_next_token_distribution(tiny_llama_dir, tokenizer):
    """Against a direct softmax of the tiny model's own logits (eager, one example at a time)."""
    import torch

    from workflow_scripts.model import engine, zero_shot

    from .test_prompts_tokenize import TASK, toy_data

    manifest = {"path": str(tiny_llama_dir), "revision": None, "trust_remote_code": False}
    model = engine.prepare(loading.load_model(manifest, "cpu", "float32", attn_implementation="sdpa"))
    eager = loading.load_model(manifest, "cpu", "float32", attn_implementation="eager")
    rows = toy_data().head(5).with_columns(part=pl.lit("eval"))
    requests = zero_shot.requests_for(rows, TASK, tokenizer)
    for k in (16, model.config.vocab_size):
        results = engine.run(model, requests, batch_size=3, hidden_layers=[0], top_k=k)
        columns = zero_shot.zero_shot_columns(rows, results)
        tops = [sim.TopK(i, p, r) for i, p, r in zip(columns["next_ids"], columns["next_probs"], columns["next_rest"])]
        full = []
        for request in requests:
            with torch.inference_mode():
                logits = eager(input_ids=torch.tensor([request.input_ids])).logits[0, -1].double()
            full.append(torch.softmax(logits, -1).numpy())
        for top, dist in zip(tops, full):
            np.testing.assert_allclose(top.probs, np.sort(dist)[::-1][:k], rtol=1e-4, atol=1e-7)
            assert top.rest == pytest.approx(1 - np.sort(dist)[::-1][:k].sum(), abs=1e-5)
        for a in range(5):
            for b in range(5):
                direct = float(full[a] @ full[b])
                got = sim.next_token_similarity(tops[a], tops[b])
                if k == model.config.vocab_size:
                    assert got == pytest.approx(direct, rel=1e-4)
                assert direct - got <= sim.truncation_bound(tops[a], tops[b]) + 1e-6
