"""Several models side by side (beyond the paper, which reads GPT-J alone): Table 2 of every model
for the same task and setting, where each model's kernel heads sit as a fraction of its depth, and
which findings hold in every model.

A finding "holds" for one model x task x setting when the 95% bootstrap interval over held-out
examples of the first number lies above the mean of the second: a one-sided reading of Table 2's own
intervals, stated in the report.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from workflow_scripts.analysis import table2_rows  # noqa: E402
from workflow_scripts.core import (
    table_io,
    tables,  # noqa: E402
)
from workflow_scripts.core import aggregate  # noqa: E402
from workflow_scripts.report import frames  # noqa: E402
from workflow_scripts.report.edit_families import FAMILY_TEXT, MAIN  # noqa: E402
from workflow_scripts.report.files import Outputs, link, outputs_of, write_piece, write_table  # noqa: E402
from workflow_scripts.report.head_tables import head_grid, top_heads  # noqa: E402
from workflow_scripts.report.text import table_cell  # noqa: E402

# Table 2's rows shown side by side: (method, metric, text).
ROWS = [
    ("icl", "accuracy", "ICL accuracy"),
    ("icl_calibrated", "accuracy", "ICL accuracy, contextually calibrated"),
    ("null", "agreement", "null agreement (share of the most frequent ICL answer)"),
    ("head_max", "agreement", "best head, max kernel: agreement with ICL"),
    ("head_max", "accuracy", "best head, max kernel: accuracy"),
    ("head_max_nosink", "agreement", "best head, sink-free max kernel: agreement"),
    ("head_label", "agreement", "best head, label-token kernel: agreement"),
    ("kr_encoder", "agreement", "kernel regression on the sentence encoder: agreement"),
    ("kr_hidden", "agreement", "kernel regression on the model's hidden states: agreement"),
]


@dataclass(frozen=True)
class Finding:
    text: str
    first: tuple[str, str]  # (method, metric) whose CI must lie above ...
    second: tuple[str, str]  # ... the mean of this one


FINDINGS = [
    Finding("ICL beats always answering its most frequent class (accuracy)", ("icl", "accuracy"), ("null", "accuracy")),
    Finding("one head, chosen on the select split, agrees with ICL above the null baseline", ("head_max", "agreement"), ("null", "agreement")),
    Finding("that head agrees with ICL more than kernel regression on the sentence encoder", ("head_max", "agreement"), ("kr_encoder", "agreement")),
    Finding("that head agrees with ICL more than kernel regression on the model's hidden states", ("head_max", "agreement"), ("kr_hidden", "agreement")),
    Finding("contextual calibration raises ICL accuracy", ("icl_calibrated", "accuracy"), ("icl", "accuracy")),
]
UPPER_HALF = "the top heads (max kernel) sit in the upper half of the network (mean depth > 0.5)"
COMPARISON_SCHEMA = {"task": pl.String, "setting": pl.String, "row": pl.String, "model": pl.String, "mean": pl.Float64,
                     "ci_low": pl.Float64, "ci_high": pl.Float64, "cell": pl.String}
FINDINGS_SCHEMA = {"finding": pl.String, "model": pl.String, "task": pl.String, "setting": pl.String, "holds": pl.Boolean}
# The causal check's summaries, as its report rule wrote them (interventions.csv): the columns read here.
CAUSAL_CSV = {"family": pl.String, "target": pl.String, "measure": pl.String, "ci_low": pl.Float64}


def number(table: pl.DataFrame, method: str, metric: str) -> dict | None:
    return frames.first_row(table.filter((pl.col("method") == method) & (pl.col("metric") == metric)))


KERNEL_READING = ("the best head (max kernel) beats the strongest query-free reading (recency, uniform, positional, "
                  "slot x label; paired 95% CI above 0)")


def holds(table: pl.DataFrame, finding: Finding) -> bool | None:
    """None where the table lacks either number (e.g. calibration off)."""
    first, second = number(table, *finding.first), number(table, *finding.second)
    if first is None or second is None or table2_rows.too_few_heldout(table):
        return None
    return bool(first["ci_low"] > second["mean"])


def depth_of_top_heads(heads: pl.DataFrame, fraction: float) -> dict:
    """The best max-kernel head and the top `fraction` of heads, as layer / last layer."""
    top = top_heads(heads, fraction).filter(pl.col("kernel") == "max")
    best = top.row(0, named=True)
    depth = aggregate.values_of(top["depth"])
    return {
        "layers": int(heads["layer"].max()) + 1, "best": f"L{int(best['layer'])} H{int(best['head'])}", "best_depth": float(best["depth"]),
        "fraction": fraction, "top_n": top.height, "top_depth": aggregate.mean(depth), "top_min": float(np.nanmin(depth)),
        "top_max": float(np.nanmax(depth)),
    }


def comparison_frame(by_name: dict[tuple, pl.DataFrame], depths: dict[tuple, dict]) -> pl.DataFrame:
    """One row per (task, setting, row, model): Table 2's numbers and the depth of the top heads."""
    records = []
    for (model, task, setting), table in by_name.items():
        for method, metric, text in ROWS:
            row = number(table, method, metric)
            if row is not None:
                records.append({"task": task, "setting": setting, "row": text, "model": model, "mean": row["mean"],
                                "ci_low": row["ci_low"], "ci_high": row["ci_high"],
                                "cell": f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"})
        depth = depths[(model, task, setting)]
        records.append({"task": task, "setting": setting, "row": "best head in-sample (all prompts), max kernel: depth (layer / last layer)",
                        "model": model, "mean": depth["best_depth"], "ci_low": np.nan, "ci_high": np.nan,
                        "cell": f"{depth['best_depth']:.2f} ({depth['best']} of {depth['layers']} layers)"})
        # The same share of each model's heads, so the row compares models of different sizes.
        records.append({"task": task, "setting": setting, "row": f"top {depth['fraction']:.0%} of heads, max kernel: mean depth [min, max]",
                        "model": model, "mean": depth["top_depth"], "ci_low": depth["top_min"], "ci_high": depth["top_max"],
                        "cell": f"{depth['top_depth']:.2f} [{depth['top_min']:.2f}, {depth['top_max']:.2f}] ({depth['top_n']} heads)"})
    return pl.DataFrame(records, schema=COMPARISON_SCHEMA)


def causal_findings(summaries: dict[tuple, pl.DataFrame]) -> list[dict]:
    """Per causal check and edit family: does editing the top-m kernel heads beat random heads of the
    same layers for some m (the paired top - random CI above 0, the causal-check section's verdict)?"""
    records = []
    for (model, task, setting), summary in summaries.items():
        for family, measure in MAIN.items():
            diffs = summary.filter((pl.col("family") == family) & (pl.col("target") == "top - random") & (pl.col("measure") == measure))
            records.append({
                "finding": f"{FAMILY_TEXT[family]} in the top kernel heads beats random heads of the same layers",
                "model": model, "task": task, "setting": setting,
                "holds": bool((aggregate.values_of(diffs["ci_low"]) > 0).any()) if diffs.height else None,
            })
    return records


def findings_frame(by_name: dict[tuple, pl.DataFrame], depths: dict[tuple, dict],
                   causal: dict[tuple, pl.DataFrame] | None = None) -> pl.DataFrame:
    """One row per (finding, model, task, setting): whether it holds (None: not measured)."""
    records = []
    for (model, task, setting), table in by_name.items():
        for finding in FINDINGS:
            records.append({"finding": finding.text, "model": model, "task": task, "setting": setting, "holds": holds(table, finding)})
        records.append({"finding": UPPER_HALF, "model": model, "task": task, "setting": setting,
                        "holds": depths[(model, task, setting)]["top_depth"] > 0.5})
        records.append({"finding": KERNEL_READING, "model": model, "task": task, "setting": setting,
                        "holds": table2_rows.reads_like_kernel(table, "head_max")})
    return pl.DataFrame(records + causal_findings(causal or {}), schema=FINDINGS_SCHEMA)


def verdict(rows: pl.DataFrame, models: list[str]) -> str:
    """Where one finding holds: in every model and set, in some models only, or in none."""
    measured = rows.drop_nulls("holds")
    if measured.is_empty():
        return "not measured"
    by_model = measured.group_by("model").agg(every=pl.col("holds").all(), some=pl.col("holds").any())
    if by_model["every"].all() and by_model.height == len(models):
        return "**holds in every model**"
    if not by_model["some"].any():
        return "holds in none"
    some = set(by_model.filter("some")["model"])
    partly = [m for m in models if m in some]
    return "holds only in part: " + ", ".join(
        f"{m} ({', '.join(measured.filter((pl.col('model') == m) & pl.col('holds'))['task'].unique(maintain_order=True))})"
        for m in partly
    )


def cell_text(cell: str | None) -> str:
    """A model's cell of the side-by-side table; a dash where the model has no such row."""
    return table_cell(cell) if isinstance(cell, str) else "—"


def comparison_lines(frame: pl.DataFrame, findings: pl.DataFrame, models: list[str], figure: str) -> list[str]:
    lines = [
        f"## Models side by side: {', '.join(models)}",
        "",
        "Table 2 of each model on the same prompts (mean over seeds [bootstrap 95% CI over held-out examples]), "
        "and where its kernel heads sit as a fraction of its depth, so models of different depth compare. "
        f"![Head agreement against depth per model]({figure})",
        "",
    ]
    for part in frame.partition_by(["task", "setting"], maintain_order=True):
        task, setting = part["task"][0], part["setting"][0]
        cells = {(r["row"], r["model"]): r["cell"] for r in part.iter_rows(named=True)}
        order = part["row"].unique(maintain_order=True).to_list()
        lines += [f"### {task} / {setting}", "", "| | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        lines += [f"| {row} | " + " | ".join(cell_text(cells.get((row, m))) for m in models) + " |" for row in order]
        lines.append("")
    lines += [
        "### Which findings hold in every model",
        "",
        "A finding holds for a model, task and setting when the 95% CI of the first number lies above the mean of the "
        "second; a causal one when the paired top - random difference of the causal check has its 95% CI above 0 for some m.",
        "",
        "| finding | " + " | ".join(models) + " | across models |",
        "|---|" + "---|" * (len(models) + 1),
    ]
    for rows in findings.partition_by("finding", maintain_order=True):
        finding = rows["finding"][0]
        cells = []
        for model in models:
            mine = rows.filter(pl.col("model") == model)
            cells.append(", ".join(f"{r['task']} / {r['setting']}: {'—' if r['holds'] is None else ('yes' if r['holds'] else 'no')}"
                                   for r in mine.iter_rows(named=True)))
        lines.append(f"| {finding} | " + " | ".join(cells) + f" | {verdict(rows, models)} |")
    return lines + [""]


def depth_figure(heads: dict[tuple, pl.DataFrame], out: str | Path, dpi: int) -> None:
    """Every head's agreement with ICL on all prompts of the set (max kernel, mean over seeds) against
    its depth, one panel per task x setting, one colour per model."""
    panels = list(dict.fromkeys((task, setting) for _, task, setting in heads))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False, constrained_layout=True)
    for ax, (task, setting) in zip(axes[0], panels):
        for (model, t, s), frame in heads.items():
            if (t, s) != (task, setting):
                continue
            grid = head_grid(frame, "max", "agreement")
            depth = np.repeat(np.arange(grid.shape[0]) / max(1, grid.shape[0] - 1), grid.shape[1])
            ax.scatter(depth, grid.ravel(), s=10, alpha=0.6, label=model)
        ax.set_xlabel("depth (layer / last layer)")
        ax.set_ylabel("agreement with ICL (max kernel)")
        ax.set_title(f"{task} / {setting}", fontsize=10)
        ax.legend(fontsize=8)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def from_snakemake(smk) -> None:
    keys = [tuple(key) for key in smk.params.sets]
    by_name = {key: frames.stored(table_io.read_table(path, tables.TABLE2)) for key, path in zip(keys, smk.input.tables)}
    per_set = len(smk.params.seeds)
    heads = {
        key: pl.concat([frames.frame_of(table_io.read_table(p, tables.HEADS)) for p in smk.input.heads[i * per_set:(i + 1) * per_set]])
        for i, key in enumerate(keys)
    }
    depths = {key: depth_of_top_heads(frame, smk.params.top_head_fraction) for key, frame in heads.items()}
    out: Outputs = outputs_of(smk)
    causal = {tuple(key): pl.read_csv(path, schema_overrides=CAUSAL_CSV) for key, path in zip(smk.params.interventions, smk.input.interventions)}
    frame, findings = comparison_frame(by_name, depths), findings_frame(by_name, depths, causal)
    depth_figure(heads, out.figure, smk.params.dpi)
    write_table(frame.drop("cell"), out, "Models side by side: Table 2 and the depth of the top heads",
                ["mean over seeds; ci_low and ci_high: bootstrap 95% CI over held-out examples (for the depth rows: "
                 "the shallowest and deepest of the top heads)."])
    write_piece(out.piece, comparison_lines(frame, findings, smk.params.models, link(out.figure)))
