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
import pandas as pd  # noqa: E402

from workflow_scripts.analysis import table2_rows  # noqa: E402
from workflow_scripts.core import (
    table_io,
    tables,  # noqa: E402
)
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


def number(table: pd.DataFrame, method: str, metric: str) -> pd.Series | None:
    row = table[(table.method == method) & (table.metric == metric)]
    return None if row.empty else row.iloc[0]


KERNEL_READING = ("the best head (max kernel) beats the strongest query-free reading (recency, uniform, positional, "
                  "slot x label; paired 95% CI above 0)")


def holds(table: pd.DataFrame, finding: Finding) -> bool | None:
    """None where the table lacks either number (e.g. calibration off)."""
    first, second = number(table, *finding.first), number(table, *finding.second)
    if first is None or second is None or table2_rows.too_few_heldout(table):
        return None
    return bool(first.ci_low > second["mean"])


def depth_of_top_heads(heads: pd.DataFrame, fraction: float) -> dict:
    """The best max-kernel head and the top `fraction` of heads, as layer / last layer."""
    top = top_heads(heads, fraction)
    top = top[top.kernel == "max"]
    best = top.iloc[0]
    return {
        "layers": int(heads.layer.max()) + 1, "best": f"L{int(best.layer)} H{int(best['head'])}", "best_depth": float(best.depth),
        "fraction": fraction, "top_n": len(top), "top_depth": float(top.depth.mean()), "top_min": float(top.depth.min()), "top_max": float(top.depth.max()),
    }


def comparison_frame(by_name: dict[tuple, pd.DataFrame], depths: dict[tuple, dict]) -> pd.DataFrame:
    """One row per (task, setting, row, model): Table 2's numbers and the depth of the top heads."""
    records = []
    for (model, task, setting), table in by_name.items():
        for method, metric, text in ROWS:
            row = number(table, method, metric)
            if row is not None:
                records.append({"task": task, "setting": setting, "row": text, "model": model, "mean": row["mean"],
                                "ci_low": row.ci_low, "ci_high": row.ci_high, "cell": f"{row['mean']:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]"})
        depth = depths[(model, task, setting)]
        records.append({"task": task, "setting": setting, "row": "best head in-sample (all prompts), max kernel: depth (layer / last layer)",
                        "model": model, "mean": depth["best_depth"], "ci_low": np.nan, "ci_high": np.nan,
                        "cell": f"{depth['best_depth']:.2f} ({depth['best']} of {depth['layers']} layers)"})
        # The same share of each model's heads, so the row compares models of different sizes.
        records.append({"task": task, "setting": setting, "row": f"top {depth['fraction']:.0%} of heads, max kernel: mean depth [min, max]",
                        "model": model, "mean": depth["top_depth"], "ci_low": depth["top_min"], "ci_high": depth["top_max"],
                        "cell": f"{depth['top_depth']:.2f} [{depth['top_min']:.2f}, {depth['top_max']:.2f}] ({depth['top_n']} heads)"})
    return pd.DataFrame.from_records(records)


def causal_findings(summaries: dict[tuple, pd.DataFrame]) -> list[dict]:
    """Per causal check and edit family: does editing the top-m kernel heads beat random heads of the
    same layers for some m (the paired top - random CI above 0, the causal-check section's verdict)?"""
    records = []
    for (model, task, setting), summary in summaries.items():
        for family, measure in MAIN.items():
            diffs = summary[(summary.family == family) & (summary.target == "top - random") & (summary.measure == measure)]
            records.append({
                "finding": f"{FAMILY_TEXT[family]} in the top kernel heads beats random heads of the same layers",
                "model": model, "task": task, "setting": setting, "holds": bool((diffs.ci_low > 0).any()) if len(diffs) else None,
            })
    return records


def findings_frame(by_name: dict[tuple, pd.DataFrame], depths: dict[tuple, dict],
                   causal: dict[tuple, pd.DataFrame] | None = None) -> pd.DataFrame:
    """One row per (finding, model, task, setting): whether it holds (None: not measured)."""
    records = []
    for (model, task, setting), table in by_name.items():
        for finding in FINDINGS:
            records.append({"finding": finding.text, "model": model, "task": task, "setting": setting, "holds": holds(table, finding)})
        records.append({"finding": UPPER_HALF, "model": model, "task": task, "setting": setting,
                        "holds": depths[(model, task, setting)]["top_depth"] > 0.5})
        records.append({"finding": KERNEL_READING, "model": model, "task": task, "setting": setting,
                        "holds": table2_rows.reads_like_kernel(table, "head_max")})
    return pd.DataFrame.from_records(records + causal_findings(causal or {}))


def verdict(rows: pd.DataFrame, models: list[str]) -> str:
    """Where one finding holds: in every model and set, in some models only, or in none."""
    measured = rows.dropna(subset=["holds"])
    if measured.empty:
        return "not measured"
    by_model = measured.groupby("model").holds.agg(["all", "any"])
    if by_model["all"].all() and len(by_model) == len(models):
        return "**holds in every model**"
    if not by_model["any"].any():
        return "holds in none"
    partly = [m for m in models if m in by_model.index and by_model.loc[m, "any"]]
    return "holds only in part: " + ", ".join(
        f"{m} ({', '.join(measured[(measured.model == m) & measured.holds.astype(bool)].task.unique())})" for m in partly
    )


def comparison_lines(frame: pd.DataFrame, findings: pd.DataFrame, models: list[str], figure: str) -> list[str]:
    lines = [
        f"## Models side by side: {', '.join(models)}",
        "",
        "Table 2 of each model on the same prompts (mean over seeds [bootstrap 95% CI over held-out examples]), "
        "and where its kernel heads sit as a fraction of its depth, so models of different depth compare. "
        f"![Head agreement against depth per model]({figure})",
        "",
    ]
    for (task, setting), part in frame.groupby(["task", "setting"], sort=False):
        cells = part.pivot(index="row", columns="model", values="cell").reindex(columns=models)
        order = list(dict.fromkeys(part.row))
        lines += [f"### {task} / {setting}", "", "| | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        lines += [f"| {row} | " + " | ".join(table_cell(c) if isinstance(c, str) else "—" for c in cells.loc[row]) + " |"
                  for row in order]
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
    for finding, rows in findings.groupby("finding", sort=False):
        cells = []
        for model in models:
            mine = rows[rows.model == model]
            cells.append(", ".join(f"{t}: {'—' if h is None or pd.isna(h) else ('yes' if h else 'no')}"
                                   for t, h in zip(mine.task + " / " + mine.setting, mine.holds)))
        lines.append(f"| {finding} | " + " | ".join(cells) + f" | {verdict(rows, models)} |")
    return lines + [""]


def depth_figure(heads: dict[tuple, pd.DataFrame], out: str | Path, dpi: int) -> None:
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
    by_name = {key: table_io.read_table(path, tables.TABLE2).to_pandas() for key, path in zip(keys, smk.input.tables)}
    per_set = len(smk.params.seeds)
    heads = {
        key: pd.concat([table_io.read_table(p, tables.HEADS).to_pandas() for p in smk.input.heads[i * per_set:(i + 1) * per_set]])
        for i, key in enumerate(keys)
    }
    depths = {key: depth_of_top_heads(frame, smk.params.top_head_fraction) for key, frame in heads.items()}
    out: Outputs = outputs_of(smk)
    causal = {tuple(key): pd.read_csv(path) for key, path in zip(smk.params.interventions, smk.input.interventions)}
    frame, findings = comparison_frame(by_name, depths), findings_frame(by_name, depths, causal)
    depth_figure(heads, out.figure, smk.params.dpi)
    write_table(frame.drop(columns="cell"), out, "Models side by side: Table 2 and the depth of the top heads",
                ["mean over seeds; ci_low and ci_high: bootstrap 95% CI over held-out examples (for the depth rows: "
                 "the shallowest and deepest of the top heads)."])
    write_piece(out.piece, comparison_lines(frame, findings, smk.params.models, link(out.figure)))
