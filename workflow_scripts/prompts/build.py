"""Stage 3, ICL prompts: one task x seed x setting's PROMPTS table (built by prompts/sets.py)."""
from __future__ import annotations

from workflow_scripts.core import table_io, tables
from workflow_scripts.prompts.sets import set_from_snakemake


def from_snakemake(smk) -> None:
    table_io.write_table(set_from_snakemake(smk), tables.PROMPTS, smk.output[0])
