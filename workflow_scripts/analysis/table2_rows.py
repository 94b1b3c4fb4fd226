"""Reading Table 2's rows: a head's gain over the query-free readings and whether it reads like a
kernel, for Table 2 itself and for every report section that cites it."""
from __future__ import annotations

import polars as pl

from workflow_scripts.core import stats, table_io

# A head's gain over the strongest query-free reading: metric name of those rows.
GAIN = "agreement_gain"


def is_head(method: str) -> bool:
    return method.startswith("head_")


def read_seeds(paths: list[str], seeds: list[int], schema) -> pl.DataFrame | None:
    """Tables of every seed stacked with a `seed` column (None when there are none)."""
    if not paths:
        return None
    return pl.concat([pl.from_arrow(table_io.read_table(p, schema)).with_columns(seed=pl.lit(s, pl.Int64))
                      for p, s in zip(paths, seeds)])


def gain_interval(table: pl.DataFrame, method: str) -> tuple[float, float, float, str] | None:
    """A head method's gain over the strongest query-free reading: (mean, low, high, reference), with the
    interval that resamples seeds, then examples (the examples' one when there is a single seed)."""
    rows = table.filter((pl.col("method") == method) & (pl.col("metric") == GAIN))
    if rows.is_empty():
        return None
    r = rows.row(0, named=True)
    low, high = (r["seeds_ci_low"], r["seeds_ci_high"]) if r["n_seeds"] > 1 else (r["ci_low"], r["ci_high"])
    return float(r["mean"]), float(low), float(high), str(r["reference"])


def too_few_heldout(table: pl.DataFrame) -> bool:
    """Whether the held-out prompts per seed are too few for an interval to be read (stats.MIN_EXAMPLES)."""
    return "n_heldout" in table.columns and stats.too_few(int(table["n_heldout"][0]))


def reads_like_kernel(table: pl.DataFrame, method: str) -> bool | None:
    """A head reads like a kernel only where its gain over every query-free reading excludes 0; None
    where that is not measured, or rests on too few held-out prompts."""
    gain = gain_interval(table, method)
    return None if gain is None or too_few_heldout(table) else gain[1] > 0
