"""Theorem 1 in the report: the synthetic check's rows pooled over HMM seeds beside the paper's Table 3,
and its summary with the figure the theory rule drew."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from workflow_scripts.core import table_io, tables
from workflow_scripts.report.files import Outputs, link, outputs_of, write_piece, write_table
from workflow_scripts.report.frames import frame_of


def theory_frame(table: pl.DataFrame) -> pl.DataFrame:
    """The rows pooled over HMM seeds, our numbers beside the paper's Table 3, per HMM construction (variant)."""
    pooled = table.filter(pl.col("hmm_seed").is_null())
    columns = ["variant", "kernel", "n_demos", "distance_mean", "distance_ci_low", "distance_ci_high", "paper_distance",
               "agreement_mean", "agreement_ci_low", "agreement_ci_high", "paper_agreement", "n_prompts"]
    return pooled.select(columns)


def theory_lines(summary: str, figure: str) -> list[str]:
    """The synthetic Theorem 1 check, as the theory rule wrote it (every construction beside Table 3 and
    which one matches it best), with its figure."""
    return [summary.strip(), "", f"![kernel regression vs. posterior]({figure})", ""]


def write_theory_section(table: pl.DataFrame, summary: str, figure: str, out: Outputs) -> None:
    write_table(theory_frame(table), out, "Theorem 1 on synthetic HMMs: kernel regression vs. the exact posterior")
    write_piece(out.piece, theory_lines(summary, link(figure)))


def from_snakemake(smk) -> None:
    write_theory_section(frame_of(table_io.read_table(smk.input.table, tables.THEORY)), Path(smk.input.summary).read_text(),
                         smk.input.figure, outputs_of(smk))
