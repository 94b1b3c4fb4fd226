"""Each head read as a kernel, as the report tabulates it: the best head per kernel, the top heads by
agreement and where they sit in depth, a layer x head grid of any per-head number, the query-swap
columns beside them, and the whole-layer ticks of the per-head heatmaps. Sections 5.2 and 5.3 and the
models side by side read heads through these."""
from __future__ import annotations

import numpy as np
import polars as pl
from matplotlib.ticker import MaxNLocator

from workflow_scripts.core.kernels import ATTENTION_KERNELS
from workflow_scripts.core import aggregate
from workflow_scripts.report.text import mean_sd

# Per-head query dependence (query_dependence.py) shown beside agreement: R^2 of the weights on slot and
# slot x label word, and with a query-swap setting how far the weights move and how often the vote does.
QUERY_COLUMNS = ["r2_slot", "r2_slot_label", "weight_shift", "vote_change"]


def ranked(scores: pl.DataFrame) -> pl.DataFrame:
    """Best mean agreement first, ties by accuracy, then in the given order; a missing score ranks last."""
    return scores.sort(["agreement", "accuracy"], descending=True, nulls_last=True, maintain_order=True)


def head_table(heads: pl.DataFrame) -> pl.DataFrame:
    """Per kernel, the head with the best mean agreement over seeds, with its per-seed numbers."""
    mean = aggregate.group_stats(heads, ["kernel", "layer", "head"], ["agreement", "accuracy"])
    rows = []
    for kernel in ATTENTION_KERNELS:
        best = ranked(mean.filter(pl.col("kernel") == kernel)).row(0, named=True)
        per_seed = heads.filter((pl.col("kernel") == kernel) & (pl.col("layer") == best["layer"]) & (pl.col("head") == best["head"]))
        rows.append(
            {
                "kernel": kernel,
                "layer": int(best["layer"]),
                "head": int(best["head"]),
                "agreement": mean_sd(aggregate.values_of(per_seed["agreement"])),
                "accuracy": mean_sd(aggregate.values_of(per_seed["accuracy"])),
                **{column: aggregate.mean(per_seed[column]) for column in QUERY_COLUMNS},
            }
        )
    return pl.DataFrame(rows)


def head_grid(heads: pl.DataFrame, kernel: str, metric: str) -> np.ndarray:
    """(layers, heads) grid of one metric of one kernel variant, mean over seeds."""
    return aggregate.grid(heads.filter(pl.col("kernel") == kernel), "layer", "head", metric)


def top_head_count(heads: pl.DataFrame, kernel: str, fraction: float) -> int:
    return max(1, int(round(fraction * head_grid(heads, kernel, "agreement").size)))


def top_head_depth(heads: pl.DataFrame, kernel: str, fraction: float) -> tuple[int, float, float, float]:
    """Where the top `fraction` of heads by agreement sit: (count, mean, min, max) of layer / (layers - 1)."""
    grid = head_grid(heads, kernel, "agreement")
    n = top_head_count(heads, kernel, fraction)
    layers = np.unravel_index(np.argsort(grid, axis=None)[::-1][:n], grid.shape)[0]
    depth = layers / max(1, grid.shape[0] - 1)
    return n, float(depth.mean()), float(depth.min()), float(depth.max())


def top_heads(heads: pl.DataFrame, fraction: float) -> pl.DataFrame:
    """Per kernel, the top `fraction` of heads by mean agreement over seeds (ties: better accuracy,
    then lower layer and head), with mean and sd over seeds and their depth (layer / last layer)."""
    heads = heads.with_columns(pl.lit(None, pl.Float64).alias(c) for c in QUERY_COLUMNS if c not in heads.columns)
    scores = aggregate.group_stats(heads, ["kernel", "layer", "head"], ["agreement", "accuracy", *QUERY_COLUMNS],
                                sds=["agreement", "accuracy"])
    last_layer = max(1, int(heads["layer"].max()))
    parts = []
    for kernel in ATTENTION_KERNELS:
        part = ranked(scores.filter(pl.col("kernel") == kernel)).head(top_head_count(heads, kernel, fraction))
        # numpy divides (polars would multiply by 1 / last_layer, off in the last bit)
        depth = pl.Series("depth", part["layer"].to_numpy() / last_layer, pl.Float64)
        parts.append(part.with_columns(rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int64), depth=depth))
    columns = ["kernel", "rank", "layer", "head", "depth", "agreement", "agreement_sd", "accuracy", "accuracy_sd", *QUERY_COLUMNS]
    return pl.concat(parts).select(columns)


def with_query_swap(heads: pl.DataFrame, swap: pl.DataFrame | None) -> pl.DataFrame:
    """Heads (every seed, a `seed` column) with the query-swap columns (missing without a swap setting)."""
    columns = ["weight_shift", "vote_change", "icl_change"]
    if swap is None or swap.is_empty():
        return heads.with_columns(pl.lit(None, pl.Float64).alias(c) for c in columns)
    keys = ["seed", "kernel", "layer", "head"]
    return heads.join(swap.select(*keys, *columns), on=keys, how="left", maintain_order="left")


def layer_head_axes(ax) -> None:
    """Ticks at whole layers and heads only (small models would get 0.25 steps)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
