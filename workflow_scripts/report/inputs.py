"""What the section rules read: the analysis tables of every seed of one model x task x setting, and
that set's title."""
from __future__ import annotations

import polars as pl

from workflow_scripts.analysis import table2_rows
from workflow_scripts.core import table_io
from workflow_scripts.core.aggregate import as_nulls
from workflow_scripts.report.frames import frame_of
from workflow_scripts.report.text import set_title


def read_all(files: list[str], schema) -> list[pl.DataFrame]:
    """One table per seed."""
    return [frame_of(table_io.read_table(f, schema)) for f in files]


def title_of(smk) -> str:
    return set_title(smk.wildcards.model, smk.wildcards.task, smk.wildcards.setting)


def seeded(smk, name: str, schema) -> pl.DataFrame | None:
    """stacked, with each table's seed (study order) in a `seed` column (None without tables)."""
    frame = table2_rows.read_seeds(list(smk.input[name]), smk.params.seeds, schema)
    return None if frame is None else as_nulls(frame)


def stacked(smk, name: str, schema) -> pl.DataFrame:
    """An analysis table of every seed of the rule's model x task x setting, stacked."""
    return pl.concat(read_all(smk.input[name], schema))
