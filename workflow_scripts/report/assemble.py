"""results/report.md, assembled from the pieces the section rules wrote: the run's warnings, Table 2
(the paper's headline) with the study-wide verdict list, Sections 5.1-5.4 per model x task x setting
(attention.py, heads.py, similarity.py, probes.py), the Section 4.2 ablations (ablations.py), the causal
check (interventions.py), Theorem 1 (theory.py) and the appendix: where the time goes (costs.py)."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from workflow_scripts.analysis import table2_rows
from workflow_scripts.analysis.baselines import BASELINES
from workflow_scripts.core import paths, run_warnings, stats, table_io, tables
from workflow_scripts.report.files import read_piece
from workflow_scripts.report.frames import stored
from workflow_scripts.report.headings import ablations_heading, causal_check_heading, header_lines, set_heading, table2_heading
from workflow_scripts.report.inputs import read_all
from workflow_scripts.report.text import set_title

PROBES_OFF = "**5.4** Probes are off: set extraction.kv_layers to keep key and value vectors."


def table2_verdicts(by_name: dict[str, pl.DataFrame]) -> list[str]:
    """One line per model x task x setting: does its paper head read like a kernel?"""
    passing = [title for title, t in by_name.items() if table2_rows.reads_like_kernel(t, "head_max")]
    failing = [title for title, t in by_name.items() if table2_rows.reads_like_kernel(t, "head_max") is False]
    lines = ["**Kernel or query-free reading?** The paper's head (max kernel) reads like a kernel only where it beats "
             f"every query-free reading ({', '.join(BASELINES)}; fitted on the select split) with a paired 95% CI above 0."]
    lines.append(f"It does in: {', '.join(passing) if passing else 'none'}. It does not in: {', '.join(failing) if failing else 'none'}.")
    few = [title for title, t in by_name.items() if table2_rows.too_few_heldout(t)]
    if few:
        lines.append(f"Too few held-out prompts to read (fewer than {stats.MIN_EXAMPLES} per seed, analysis.n_heldout): {', '.join(few)}.")
    return [*lines, ""]


def assemble(
    title: str, study: dict, tables2: list[list[str]], sets: list[tuple[str, list[pl.DataFrame], list[list[str]]]],
    ablations: list[str], interventions: list[str], theory: list[str], warnings: list[str] = (), appendix: list[str] = (),
) -> str:
    """results/report.md: the run's warnings, Table 2 (the paper's headline), then Sections 5.1-5.4 per
    model x task x setting (title, its summaries over seeds, its pieces), the Section 4.2 ablations,
    the causal check, the theorem check and the appendix (the cost table)."""
    lines = header_lines(title, study) + list(warnings) + table2_heading()
    for piece in tables2:
        lines += piece
    for set_name, summaries, pieces in sets:
        lines += set_heading(set_name, summaries)
        for piece in pieces:
            lines += piece
    return "\n".join(lines + ablations + interventions + theory + list(appendix)) + "\n"


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def from_snakemake(smk) -> None:
    """Pieces come per model x task x setting in params.sets order; summaries are every seed of each."""
    keys, study = smk.params.sets, smk.params.study
    summaries = chunks(read_all(list(smk.input.summaries), tables.SUMMARY), len(study["seeds"]))
    # Without keys and values kept (extraction.kv_layers empty) there are no probes: say so in their place.
    probes = [read_piece(p) for p in smk.input.probes] or [[PROBES_OFF, ""]] * len(keys)
    pieces = zip(*([read_piece(p) for p in smk.input[name]] for name in ("attention", "heads", "similarity")), probes)
    sets = [(set_title(*key), seeds, list(parts)) for key, seeds, parts in zip(keys, summaries, pieces)]
    ablations = []
    per_model = chunks([read_piece(p) for p in smk.input.ablations], len(smk.params.ablations) or 1)
    for model, model_pieces in zip(study["models"], per_model):
        ablations += ablations_heading(model) + [line for piece in model_pieces for line in piece]
    # With several models, their side-by-side view follows every model's Table 2.
    verdicts = table2_verdicts({set_title(*key): stored(table_io.read_table(path, tables.TABLE2))
                                for key, path in zip(keys, smk.input.table2_tables)})
    tables2 = [verdicts, *(read_piece(p) for p in [*smk.input.table2, *smk.input.models])]
    pieces = [line for p in smk.input.interventions for line in read_piece(p)]
    interventions = causal_check_heading() + pieces if pieces else []
    warnings = run_warnings.warning_lines(run_warnings.study_warnings(paths.LOGS))
    Path(smk.output[0]).write_text(
        assemble(smk.params.title, study, tables2, sets, ablations, interventions, read_piece(smk.input.theory), warnings,
                 read_piece(smk.input.costs)))
