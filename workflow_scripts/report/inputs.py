"""What the section rules read: the analysis tables of every seed of one model x task x setting, and
that set's title."""
from __future__ import annotations

import pandas as pd

from workflow_scripts.analysis import table2_rows
from workflow_scripts.core import table_io
from workflow_scripts.report.text import set_title


def read_all(files: list[str], schema) -> list[pd.DataFrame]:
    """One table per seed."""
    return [table_io.read_table(f, schema).to_pandas() for f in files]


def title_of(smk) -> str:
    return set_title(smk.wildcards.model, smk.wildcards.task, smk.wildcards.setting)


def seeded(smk, name: str, schema) -> pd.DataFrame:
    """stacked, with each table's seed (study order) in a `seed` column."""
    return table2_rows.read_seeds(list(smk.input[name]), smk.params.seeds, schema)


def stacked(smk, name: str, schema) -> pd.DataFrame:
    """An analysis table of every seed of the rule's model x task x setting, stacked."""
    return pd.concat(read_all(smk.input[name], schema))
