"""Each head read as a kernel, as the report tabulates it: the best head per kernel, the top heads by
agreement and where they sit in depth, a layer x head grid of any per-head number, the query-swap
columns beside them, and the whole-layer ticks of the per-head heatmaps. Sections 5.2 and 5.3 and the
models side by side read heads through these."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from workflow_scripts.core.kernels import ATTENTION_KERNELS
from workflow_scripts.report.text import mean_sd

# Per-head query dependence (query_dependence.py) shown beside agreement: R^2 of the weights on slot and
# slot x label word, and with a query-swap setting how far the weights move and how often the vote does.
QUERY_COLUMNS = ["r2_slot", "r2_slot_label", "weight_shift", "vote_change"]


def head_table(heads: pd.DataFrame) -> pd.DataFrame:
    """Per kernel, the head with the best mean agreement over seeds, with its per-seed numbers."""
    mean = heads.groupby(["kernel", "layer", "head"])[["agreement", "accuracy"]].mean().reset_index()
    rows = []
    for kernel in ATTENTION_KERNELS:
        best = mean[mean.kernel == kernel].sort_values(["agreement", "accuracy"], ascending=False).iloc[0]
        per_seed = heads[(heads.kernel == kernel) & (heads.layer == best.layer) & (heads["head"] == best["head"])]
        rows.append(
            {
                "kernel": kernel,
                "layer": int(best.layer),
                "head": int(best["head"]),
                "agreement": mean_sd(per_seed.agreement),
                "accuracy": mean_sd(per_seed.accuracy),
                **{column: float(per_seed[column].mean()) for column in QUERY_COLUMNS},
            }
        )
    return pd.DataFrame(rows)


def head_grid(heads: pd.DataFrame, kernel: str, metric: str) -> np.ndarray:
    """(layers, heads) grid of one metric of one kernel variant."""
    return heads[heads.kernel == kernel].groupby(["layer", "head"])[metric].mean().unstack("head").to_numpy()


def top_head_count(heads: pd.DataFrame, kernel: str, fraction: float) -> int:
    return max(1, int(round(fraction * head_grid(heads, kernel, "agreement").size)))


def top_head_depth(heads: pd.DataFrame, kernel: str, fraction: float) -> tuple[int, float, float, float]:
    """Where the top `fraction` of heads by agreement sit: (count, mean, min, max) of layer / (layers - 1)."""
    grid = head_grid(heads, kernel, "agreement")
    n = top_head_count(heads, kernel, fraction)
    layers = np.unravel_index(np.argsort(grid, axis=None)[::-1][:n], grid.shape)[0]
    depth = layers / max(1, grid.shape[0] - 1)
    return n, float(depth.mean()), float(depth.min()), float(depth.max())


def top_heads(heads: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """Per kernel, the top `fraction` of heads by mean agreement over seeds (ties: better accuracy,
    then lower layer and head), with mean and sd over seeds and their depth (layer / last layer)."""
    heads = heads.reindex(columns=list(dict.fromkeys([*heads.columns, *QUERY_COLUMNS])))
    scores = heads.groupby(["kernel", "layer", "head"])[["agreement", "accuracy"]].agg(["mean", "std"])
    scores.columns = ["agreement", "agreement_sd", "accuracy", "accuracy_sd"]
    scores = scores.join(heads.groupby(["kernel", "layer", "head"])[QUERY_COLUMNS].mean()).reset_index()
    last_layer = max(1, int(heads.layer.max()))
    parts = []
    for kernel in ATTENTION_KERNELS:
        part = scores[scores.kernel == kernel].sort_values(["agreement", "accuracy"], ascending=False, kind="stable")
        part = part.head(top_head_count(heads, kernel, fraction))
        parts.append(part.assign(rank=np.arange(1, len(part) + 1), depth=part.layer / last_layer))
    columns = ["kernel", "rank", "layer", "head", "depth", "agreement", "agreement_sd", "accuracy", "accuracy_sd", *QUERY_COLUMNS]
    return pd.concat(parts)[columns].reset_index(drop=True)


def with_query_swap(heads: pd.DataFrame, swap: pd.DataFrame | None) -> pd.DataFrame:
    """Heads (every seed, a `seed` column) with the query-swap columns (nan without a swap setting)."""
    if swap is None or swap.empty:
        return heads.assign(weight_shift=np.nan, vote_change=np.nan, icl_change=np.nan)
    keys = ["seed", "kernel", "layer", "head"]
    return heads.merge(swap[[*keys, "weight_shift", "vote_change", "icl_change"]], on=keys, how="left")


def layer_head_axes(ax) -> None:
    """Ticks at whole layers and heads only (small models would get 0.25 steps)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
