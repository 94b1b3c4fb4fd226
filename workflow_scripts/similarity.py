"""Section 5.3 / Fig. 4: do heads attend to demonstrations the model would answer like the query?

Prediction similarity sim(x, x') = P(o|x)^T P(o|x'), with P(o|x) the model's zero-shot distribution
over the label words for x alone. Per head, the Pearson correlation between sim(x_test, x_i) and the
head's kernel weight a_i over all (prompt, demonstration) pairs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from . import schemas, stats
from .kernels import ATTENTION_KERNELS, attention_weights
from .readers import iter_prompts, read_zero_shot, rows_for


def prediction_similarity(query_probs: np.ndarray, demo_probs: np.ndarray) -> np.ndarray:
    """P(o|x_test)^T P(o|x_i) for each demonstration: (k, classes) @ (classes,) -> (k,)."""
    return demo_probs @ query_probs


def head_correlations(prompts: pa.Table, shards: pa.Table, probs: pd.Series, where: str = "zero-shot table") -> dict:
    """Columns of SIMILARITY: every head's Pearson correlation, per kernel variant; `probs` maps
    example id -> zero-shot label distribution."""
    accumulators: dict[str, stats.PearsonAccumulator] = {}
    for p in iter_prompts(prompts, shards):
        weights = attention_weights(p["attention"], p["x_start"], p["y_pos"])
        query = rows_for(probs, [p["example_id"]], where)[0]
        demos = np.stack(rows_for(probs, p["demo_ids"], where))
        sim = prediction_similarity(query, demos)
        for name in ATTENTION_KERNELS:
            accumulators.setdefault(name, stats.PearsonAccumulator(weights[name].shape[:-1])).add(weights[name], sim)
    columns: dict[str, list] = {name: [] for name in schemas.SIMILARITY.names}
    for name, acc in accumulators.items():
        pearson = acc.result()
        layer, head = np.meshgrid(*map(np.arange, pearson.shape), indexing="ij")
        columns["layer"] += layer.ravel().tolist()
        columns["head"] += head.ravel().tolist()
        columns["kernel"] += [name] * pearson.size
        columns["pearson"] += pearson.ravel().tolist()
        columns["n_pairs"] += [acc.count] * pearson.size
    return columns


def write_similarity(prompts_path: str | Path, shard_paths: list[str], zero_shot_path: str | Path, out: str | Path) -> None:
    prompts = schemas.read_table(prompts_path, schemas.PROMPTS)
    shards = schemas.read_tables(shard_paths, schemas.SHARD)
    probs = read_zero_shot(zero_shot_path, hidden=False).probs
    schemas.write_table(head_correlations(prompts, shards, probs, str(zero_shot_path)), schemas.SIMILARITY, out)


def from_snakemake(smk) -> None:
    write_similarity(smk.input.prompts, list(smk.input.shards), smk.input.zero_shot, smk.output[0])
