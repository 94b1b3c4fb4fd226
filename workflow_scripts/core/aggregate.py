"""Means, sds and medians of table columns, summed in a fixed order so that a rerun, or a rewrite
of the code around them, gives the same bits: the report's CSV pages print every float in full and
the ablation summaries store them. polars' own aggregations sum in another order, so they are not
used for float statistics:
- a group mean is a segment sum (numpy's reduceat) over the count where the rows already come in
  group order and no value is missing, else a compensated (Kahan) sum in row order in the column's
  own precision (float32 stays float32): the two ways pandas 3 summed, which made the study's
  stored results;
- a group sd is Welford's running variance;
- a whole column's mean is numpy's pairwise sum (a missing value counted as 0) over the count of
  present values, its sd the two-pass variance.
Missing is null or NaN alike."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import polars as pl
import polars.selectors as cs


def equal(a: str | pl.Expr, b: str | pl.Expr) -> pl.Expr:
    """a == b, where a missing value on either side compares unequal (false, not missing): an indicator
    averaged over examples counts a missing prediction as a miss."""
    a, b = (pl.col(x) if isinstance(x, str) else x for x in (a, b))
    return (a == b).fill_null(False)


def as_nulls(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with every NaN as null: polars orders NaN above every number (NaN > 0 is true, sorting
    descending puts it first), while a missing value is to compare false and sort last."""
    return frame.with_columns(cs.float().fill_nan(None))


def values_of(column: pl.Series) -> np.ndarray:
    """A column as float64 (float32 stays float32, which is summed in float32), missing values as NaN."""
    dtype = np.float32 if column.dtype == pl.Float32 else np.float64
    return column.cast(pl.Float64).to_numpy().astype(dtype)


def groups_of(frame: pl.DataFrame, keys: list[str], sort: bool = True) -> tuple[pl.DataFrame, np.ndarray]:
    """The distinct keys (sorted, or in the order they first appear) and each row's group number;
    rows with a missing key belong to no group (-1)."""
    groups = frame.select(keys).unique(maintain_order=True).drop_nulls()
    if sort:
        groups = groups.sort(keys, maintain_order=True)
    numbered = frame.select(keys).join(groups.with_row_index("group"), on=keys, how="left", maintain_order="left")
    return groups, numbered["group"].fill_null(-1).cast(pl.Int64).to_numpy()


def turns(values: np.ndarray, labels: np.ndarray) -> Iterator[np.ndarray]:
    """The rows holding each group's first present value, then each group's second, ... (row order
    within a group), so every turn updates a group at most once."""
    present = np.flatnonzero((labels >= 0) & ~np.isnan(values))
    rows = present[np.argsort(labels[present], kind="stable")]
    if not len(rows):
        return
    sizes = np.diff(np.r_[0, np.flatnonzero(np.diff(labels[rows])) + 1, len(rows)])
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    for turn in range(int(rank.max()) + 1):
        yield rows[rank == turn]


def segment_means(values: np.ndarray, labels: np.ndarray, n_groups: int) -> np.ndarray:
    """Group means of (columns, rows) `values` whose rows come in group order (rows of no group first)."""
    present = labels >= 0
    ids, values = labels[present], np.ascontiguousarray(values[:, present], dtype=np.float64)
    out = np.full((values.shape[0], n_groups), np.nan)
    if ids.size:
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        sizes = np.diff(starts, append=ids.size).astype(np.float64)
        out[:, ids[starts]] = np.add.reduceat(values, starts, axis=1) / sizes
    return out


def group_means(values: np.ndarray, labels: np.ndarray, n_groups: int) -> list[np.ndarray]:
    """Group means of each row of (columns, rows) `values`, columns that pandas held in one block: a
    missing value in any of them sends them all through the compensated sum."""
    if (np.diff(labels) >= 0).all() and not np.isnan(values).any():
        return list(segment_means(values, labels, n_groups))
    return [kahan_means(column, labels, n_groups) for column in values]


def kahan_means(values: np.ndarray, labels: np.ndarray, n_groups: int) -> np.ndarray:
    dtype = values.dtype
    total, compensation, count = np.zeros(n_groups, dtype), np.zeros(n_groups, dtype), np.zeros(n_groups, np.int64)
    for rows in turns(values, labels):
        group = labels[rows]
        y = values[rows] - compensation[group]
        t = total[group] + y
        error = t - total[group] - y
        # An infinite value makes the error NaN; it is dropped so the sum stays infinite.
        compensation[group] = np.where(np.isnan(error), dtype.type(0), error)
        total[group] = t
        count[group] += 1
    return np.divide(total, count.astype(dtype), out=np.full(n_groups, np.nan, dtype), where=count > 0)


def welford_sds(values: np.ndarray, labels: np.ndarray, n_groups: int, ddof: int = 1) -> np.ndarray:
    mean, squares, count = np.zeros(n_groups), np.zeros(n_groups), np.zeros(n_groups, np.int64)
    for rows in turns(values, labels):
        group, value = labels[rows], values[rows]
        count[group] += 1
        old = mean[group]
        mean[group] = old + (value - old) / count[group]
        squares[group] += (value - mean[group]) * (value - old)
    variance = np.divide(squares, count - ddof, out=np.full(n_groups, np.nan), where=count > ddof)
    return np.sqrt(variance)


def group_stats(frame: pl.DataFrame, keys: list[str], means: list[str], sds: list[str] = (), sort: bool = True,
                blocks: Sequence[Sequence[str]] | None = None) -> pl.DataFrame:
    """One row per group (keys sorted, or in first-seen order): the keys, the mean of each of `means`
    (as `name`) and the sd over rows (ddof 1) of each of `sds` (as `name_sd`); null where a group has
    no value (or one, for an sd). blocks: the means' columns in the blocks pandas held them in
    (group_means; default: each column its own)."""
    groups, labels = groups_of(frame, keys, sort)
    n = groups.height
    blocks = [list(block) for block in blocks if block] if blocks is not None else [[name] for name in means]
    columns = {}
    for block in blocks:
        columns |= dict(zip(block, group_means(np.stack([values_of(frame[name]) for name in block]), labels, n)))
    columns |= {f"{name}_sd": welford_sds(values_of(frame[name]).astype(np.float64), labels, n) for name in sds}
    return as_nulls(groups.with_columns(pl.Series(name, values) for name, values in columns.items()))


def grid(frame: pl.DataFrame, rows: str, columns: str, metric: str) -> np.ndarray:
    """(rows, columns) grid of the group means of `metric`, both axes in sorted order; NaN where a
    combination has no row."""
    means = group_stats(frame, [rows, columns], [metric])
    row_keys, column_keys = (means[key].unique().sort() for key in (rows, columns))
    out = np.full((len(row_keys), len(column_keys)), np.nan, values_of(means[metric]).dtype)
    i = np.searchsorted(row_keys.to_numpy(), means[rows].to_numpy())
    j = np.searchsorted(column_keys.to_numpy(), means[columns].to_numpy())
    out[i, j] = means[metric].to_numpy()
    return out


def mean(column: pl.Series | np.ndarray) -> float:
    """The mean of the present values: their pairwise sum (missing ones counted as 0) over their count."""
    values = np.asarray(values_of(column) if isinstance(column, pl.Series) else column, dtype=np.float64)
    missing = np.isnan(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.where(missing, 0.0, values).sum() / np.float64(values.size - missing.sum()))


def sd(column: pl.Series | np.ndarray, ddof: int = 1) -> float:
    """The sd of the present values, in two passes (mean, then squared deviations); NaN with too few."""
    values = np.asarray(values_of(column) if isinstance(column, pl.Series) else column, dtype=np.float64)
    missing = np.isnan(values)
    count = values.size - missing.sum()
    if count <= ddof:
        return float("nan")
    values = np.where(missing, 0.0, values)
    deviations = np.where(missing, 0.0, (values.sum() / np.float64(count) - values) ** 2)
    return float(np.sqrt(deviations.sum() / np.float64(count - ddof)))


def median(column: pl.Series) -> float:
    values = values_of(column)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if len(values) else float("nan")


def row_means(grid: np.ndarray) -> np.ndarray:
    """Per row of a 2-D grid, the mean of its present values, summed column by column."""
    missing = np.isnan(grid)
    total = np.zeros(grid.shape[0])
    for column in np.where(missing, 0.0, grid).T:
        total += column
    count = (~missing).sum(axis=1)
    return np.divide(total, count, out=np.full(grid.shape[0], np.nan), where=count > 0)

