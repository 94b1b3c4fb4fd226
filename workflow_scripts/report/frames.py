"""How the report reads its frames: missing values as null, a row as a dict (missing floats NaN), and
an integer column with a missing value as floats, as the report has always written it."""
from __future__ import annotations

import polars as pl
import pyarrow as pa

from workflow_scripts.core.aggregate import as_nulls


def frame_of(table: pa.Table) -> pl.DataFrame:
    """A stage's table as the report reads it (as_nulls)."""
    return as_nulls(pl.from_arrow(table))


def stored(table: pa.Table) -> pl.DataFrame:
    """A Table 2 as stored (NaN kept), as table2_rows.read_seeds gives every table: table2_rows reads
    its intervals with float(), which a null would fail."""
    return pl.from_arrow(table)


def as_held(frame: pl.DataFrame) -> pl.DataFrame:
    """An integer column with a missing value as floats: the report has always held (and written, 3.0)
    such a column so."""
    return frame.with_columns(pl.col(c).cast(pl.Float64) for c, dtype in frame.schema.items()
                              if dtype.is_integer() and frame[c].null_count())


def rows(frame: pl.DataFrame) -> list[dict]:
    """Every row as a dict, a missing number as NaN (so it compares false and formats as nan; as_held)."""
    frame = as_held(frame)
    floats = [c for c, dtype in frame.schema.items() if dtype.is_float()]
    return [{**row, **{c: float("nan") for c in floats if row[c] is None}} for row in frame.iter_rows(named=True)]


def first_row(frame: pl.DataFrame) -> dict | None:
    """The first row (rows), None where there is none."""
    return None if frame.is_empty() else rows(frame.head(1))[0]
