"""Section 5.3 / Fig. 4: do heads attend to demonstrations the model would answer like the query?

Prediction similarity sim(x, x') = P(o|x)^T P(o|x'), with P(o|x) the model's zero-shot distribution
for x alone, read two ways: over the label words (as the paper's experiments score it) and over the
whole next-token vocabulary (the theory's p(o|x) = p_pretrain^T T_x B is over every observation),
the latter from each example's stored top k. Per head and reading, the Pearson correlation between
sim(x_test, x_i) and the head's kernel weight a_i over all (prompt, demonstration) pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from workflow_scripts.core import stats, table_io, tables
from workflow_scripts.core.kernels import ATTENTION_KERNELS, attention_weights
from workflow_scripts.core.readers import Shards, by_example, iter_prompts, list_arrays, read_attention_rows, read_zero_shot, rows_for

# The two readings of P(o|x), in the order the report shows them.
SIMILARITIES = ("label_words", "next_token")


@dataclass(frozen=True)
class TopK:
    """One example's next-token distribution as stored: the k most probable token ids (most probable
    first), their probabilities and the mass of all other tokens."""

    ids: np.ndarray
    probs: np.ndarray
    rest: float


def prediction_similarity(query_probs: np.ndarray, demo_probs: np.ndarray) -> np.ndarray:
    """P(o|x_test)^T P(o|x_i) for each demonstration: (k, classes) @ (classes,) -> (k,)."""
    return demo_probs @ query_probs


def next_token_similarity(query: TopK, demo: TopK) -> float:
    """sum_t p(t|x_test) p(t|x_i) over the tokens both top-k lists hold; a token outside a list counts 0.

    The tokens left out add at most truncation_bound(query, demo): those outside the demo's list have
    p(t|x_i) <= its k-th probability and their p(t|x_test) sum to at most 1, and also sum p(t|x_i)
    over them is its rest mass while p(t|x_test) <= 1; the same with the roles swapped."""
    _, q, d = np.intersect1d(query.ids, demo.ids, assume_unique=True, return_indices=True)
    return float(query.probs[q].astype(np.float64) @ demo.probs[d].astype(np.float64))


def truncation_bound(a: TopK, b: TopK) -> float:
    """The most next_token_similarity(a, b) can fall short of the full-vocabulary dot product."""
    return min(float(b.probs[-1]), b.rest) + min(float(a.probs[-1]), a.rest)


def top_k_of(zero_shot: pl.DataFrame) -> dict[str, TopK]:
    return {i: TopK(ids, probs, float(rest)) for i, ids, probs, rest in
            zip(zero_shot["example_id"].to_list(), list_arrays(zero_shot["next_ids"]), list_arrays(zero_shot["next_probs"]),
                zero_shot["next_rest"].to_list())}


def head_correlations(prompts: pa.Table, shards: Shards | pa.Table, probs: dict[str, np.ndarray], top_k: dict[str, TopK],
                      where: str = "zero-shot table") -> dict:
    """Columns of SIMILARITY: every head's Pearson correlation, per kernel variant and similarity;
    `probs` maps example id -> zero-shot label distribution, `top_k` example id -> its next tokens."""
    accumulators: dict[tuple[str, str], stats.PearsonAccumulator] = {}
    bounds = []
    for p in iter_prompts(prompts, shards):
        weights = attention_weights(p["attention"], p["x_start"], p["y_pos"])
        query = rows_for(probs, [p["example_id"]], where)[0]
        demos = np.stack(rows_for(probs, p["demo_ids"], where))
        query_top, *demos_top = rows_for(top_k, [p["example_id"], *p["demo_ids"]], where)
        sims = {
            "label_words": prediction_similarity(query, demos),
            "next_token": np.array([next_token_similarity(query_top, d) for d in demos_top]),
        }
        bounds += [truncation_bound(query_top, d) for d in demos_top]
        for similarity, sim in sims.items():
            for name in ATTENTION_KERNELS:
                acc = accumulators.setdefault((name, similarity), stats.PearsonAccumulator(weights[name].shape[:-1]))
                acc.add(weights[name], sim)
    columns: dict[str, list] = {name: [] for name in tables.SIMILARITY.names}
    for (name, similarity), acc in accumulators.items():
        pearson = acc.result()
        layer, head = np.meshgrid(*map(np.arange, pearson.shape), indexing="ij")
        columns["layer"] += layer.ravel().tolist()
        columns["head"] += head.ravel().tolist()
        columns["kernel"] += [name] * pearson.size
        columns["similarity"] += [similarity] * pearson.size
        columns["pearson"] += pearson.ravel().tolist()
        columns["n_pairs"] += [acc.count] * pearson.size
        columns["truncation_bound"] += [float(np.max(bounds)) if similarity == "next_token" else 0.0] * pearson.size
    return columns


def write_similarity(prompts_path: str | Path, shard_paths: list[str], zero_shot_path: str | Path, out: str | Path) -> None:
    prompts = table_io.read_table(prompts_path, tables.PROMPTS)
    shards = read_attention_rows(shard_paths)
    zero_shot = read_zero_shot(zero_shot_path, hidden=False, next_token=True)
    columns = head_correlations(prompts, shards, by_example(zero_shot, "probs"), top_k_of(zero_shot), str(zero_shot_path))
    table_io.write_table(columns, tables.SIMILARITY, out)


def from_snakemake(smk) -> None:
    write_similarity(smk.input.prompts, list(smk.input.shards), smk.input.zero_shot, smk.output[0])
