"""Reading Table 2's rows: a head's gain over the query-free readings and whether it reads like a
kernel, for Table 2 itself and for every report section that cites it."""
from __future__ import annotations

import pandas as pd

from workflow_scripts.core import stats, table_io

# A head's gain over the strongest query-free reading: metric name of those rows.
GAIN = "agreement_gain"


def is_head(method: str) -> bool:
    return method.startswith("head_")


def read_seeds(paths: list[str], seeds: list[int], schema) -> pd.DataFrame | None:
    """Tables of every seed stacked with a `seed` column (None when there are none)."""
    if not paths:
        return None
    return pd.concat([table_io.read_table(p, schema).to_pandas().assign(seed=s) for p, s in zip(paths, seeds)], ignore_index=True)


def gain_interval(table: pd.DataFrame, method: str) -> tuple[float, float, float, str] | None:
    """A head method's gain over the strongest query-free reading: (mean, low, high, reference), with the
    interval that resamples seeds, then examples (the examples' one when there is a single seed)."""
    row = table[(table.method == method) & (table.metric == GAIN)]
    if row.empty:
        return None
    r = row.iloc[0]
    low, high = (r.seeds_ci_low, r.seeds_ci_high) if r.n_seeds > 1 else (r.ci_low, r.ci_high)
    return float(r["mean"]), float(low), float(high), str(r.reference)


def too_few_heldout(table: pd.DataFrame) -> bool:
    """Whether the held-out prompts per seed are too few for an interval to be read (stats.MIN_EXAMPLES)."""
    return "n_heldout" in table and stats.too_few(int(table.n_heldout.iloc[0]))


def reads_like_kernel(table: pd.DataFrame, method: str) -> bool | None:
    """A head reads like a kernel only where its gain over every query-free reading excludes 0; None
    where that is not measured, or rests on too few held-out prompts."""
    gain = gain_interval(table, method)
    return None if gain is None or too_few_heldout(table) else gain[1] > 0
