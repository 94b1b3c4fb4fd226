"""The causal check in the report: per family, target and m, what the edits did to the held-out
predictions, with bootstrap CIs over held-out examples and the paired comparison with random heads."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import schemas, stats  # noqa: E402
from .report_files import Outputs, link, outputs_of, write_piece, write_table  # noqa: E402

FAMILY_TEXT = {
    "knockout": "head knockout",
    "label_knockout": "label-attention knockout",
    "steer": "kernel steering",
}
# The measure each family is judged by: whether the prediction changed, or moved to the steered class.
MAIN = {"knockout": "flip_rate", "label_knockout": "flip_rate", "steer": "steer_success"}
SUMMARY_COLUMNS = ("family", "target", "m", "measure", "mean", "ci_low", "ci_high", "n_prompts", "n_seeds")
MEASURE_TEXT = {
    "flip_rate": "flip rate",
    "steer_success": "steered to the runner-up",
    "margin_change": "margin change",
    "accuracy_after": "ICL accuracy after",
}


def measures(rows: pd.DataFrame) -> pd.DataFrame:
    """Per row, the measures of one edit on one prompt."""
    return rows.assign(
        flip_rate=(rows.prediction != rows.original_prediction).astype(float),
        steer_success=np.where(rows.family == "steer", rows.prediction == rows.steer_class, np.nan),
        margin_change=rows.margin_after - rows.margin_before,
        accuracy_after=(rows.prediction == rows.label).astype(float),
    )


def per_example(rows: pd.DataFrame) -> pd.DataFrame:
    """Each measure per family, target, m and held-out example, averaged over seeds and random draws."""
    names = list(MEASURE_TEXT)
    return measures(rows).groupby(["family", "target", "m", "example_id"])[names].mean().reset_index()


def summarize(rows: pd.DataFrame, n_resamples: int, seed: int) -> dict[str, list]:
    """Columns SUMMARY_COLUMNS: every measure's mean with a bootstrap CI over held-out examples,
    the unedited ICL accuracy (family and target "none"), and "top - random", the paired difference per
    example between the top-m heads and the random heads of their layers."""
    out: dict[str, list] = {name: [] for name in SUMMARY_COLUMNS}
    n_seeds = rows.seed.nunique()

    def add(family: str, target: str, m: int, measure: str, values: np.ndarray) -> None:
        values = values[~np.isnan(values)]
        if not len(values):
            return
        low, high = stats.bootstrap_ci(values, n_resamples, seed)
        row = {"family": family, "target": target, "m": m, "measure": measure, "mean": float(values.mean()),
               "ci_low": low, "ci_high": high, "n_prompts": len(values), "n_seeds": n_seeds}
        for name in out:
            out[name].append(row[name])

    unedited = rows.drop_duplicates(["seed", "prompt_id"]).assign(correct=lambda r: (r.original_prediction == r.label).astype(float))
    add("none", "none", 0, "accuracy_after", unedited.groupby("example_id").correct.mean().to_numpy())
    examples = per_example(rows)
    for (family, target, m), part in examples.groupby(["family", "target", "m"], sort=False):
        for measure in MEASURE_TEXT:
            add(family, target, int(m), measure, part[measure].to_numpy(dtype=float))
    for (family, m), part in examples.groupby(["family", "m"], sort=False):
        wide = part.pivot(index="example_id", columns="target")
        if {"top", "random"} <= set(part.target):
            for measure in MEASURE_TEXT:
                add(family, "top - random", int(m), measure, (wide[measure]["top"] - wide[measure]["random"]).to_numpy(dtype=float))
    return out


def cell(summary: pd.DataFrame, family: str, target: str, m: int, measure: str) -> pd.Series | None:
    row = summary[(summary.family == family) & (summary.target == target) & (summary.m == m) & (summary.measure == measure)]
    return row.iloc[0] if len(row) else None


def interval(row: pd.Series | None, percent: bool = True) -> str:
    """A mean and its CI as text: shares in whole percent, logit margins signed to two decimals."""
    if row is None:
        return "n/a"
    if percent:
        return f"{row['mean'] * 100:.0f}% [{row.ci_low * 100:.0f}, {row.ci_high * 100:.0f}]"
    return f"{row['mean']:+.2f} [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"


def verdict(summary: pd.DataFrame, family: str) -> str:
    """One honest sentence per family: do the kernel heads beat random heads of the same layers?"""
    measure = MAIN[family]
    diffs = summary[(summary.family == family) & (summary.target == "top - random") & (summary.measure == measure)]
    if diffs.empty:
        return f"{FAMILY_TEXT[family].capitalize()}: no prompt could be edited."
    above = diffs[diffs.ci_low > 0].m.tolist()
    below = diffs[diffs.ci_high < 0].m.tolist()
    what = "changes more predictions" if family != "steer" else "moves more predictions to the steered class"
    if above:
        text = (f"{FAMILY_TEXT[family].capitalize()} in the top-m kernel heads {what} than in random heads of the same "
                f"layers for m = {', '.join(map(str, above))} (paired 95% CI above 0): these heads drive the prediction, "
                "not only mirror it")
    else:
        text = (f"{FAMILY_TEXT[family].capitalize()} in the top-m kernel heads {what.replace('more', 'no more')} than in "
                "random heads of the same layers (every paired 95% CI includes 0"
                + (f", or favours the random heads for m = {', '.join(map(str, below))}" if below else "")
                + "): agreement with ICL does not show here that these heads cause the prediction")
    return text + "."


def table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per family, m and target, the main measure, the margin change and the accuracy after, as text."""
    records = []
    for (family, m), part in summary[summary.family != "none"].groupby(["family", "m"], sort=False):
        for target in ("top", "random", "bottom", "top - random"):
            record = {"family": FAMILY_TEXT[family], "m": int(m), "heads": target}
            for measure in (MAIN[family], "margin_change", "accuracy_after"):
                row = cell(part, family, target, int(m), measure)
                record[MEASURE_TEXT[measure] if measure != MAIN[family] else "main measure"] = interval(row, measure != "margin_change")
            records.append(record)
    return pd.DataFrame(records)


def figure(summary: pd.DataFrame, title: str, out: str, dpi: int) -> None:
    """Per family: the main measure and the margin change per m, top / random / bottom heads, with CIs."""
    families = [f for f in FAMILY_TEXT if f in set(summary.family)]
    fig, axes = plt.subplots(2, len(families), figsize=(4.2 * len(families), 6.5), squeeze=False, constrained_layout=True)
    colours = {"top": "#b91c1c", "random": "#64748b", "bottom": "#0369a1"}
    for col, family in enumerate(families):
        part = summary[summary.family == family]
        ms = sorted(part.m.unique())
        for row, measure in enumerate((MAIN[family], "margin_change")):
            ax = axes[row, col]
            for i, target in enumerate(colours):
                cells = [cell(part, family, target, m, measure) for m in ms]
                x = np.arange(len(ms)) + (i - 1) * 0.25
                mean = np.array([c["mean"] if c is not None else np.nan for c in cells])
                err = np.array([[c["mean"] - c.ci_low, c.ci_high - c["mean"]] if c is not None else [np.nan, np.nan] for c in cells]).T
                ax.bar(x, mean, 0.25, yerr=err, color=colours[target], label=f"{target} m heads", capsize=3)
            ax.set_xticks(np.arange(len(ms)), [f"m={m}" for m in ms])
            ax.axhline(0, color="black", lw=0.6)
            ax.set_title(f"{FAMILY_TEXT[family]}: {MEASURE_TEXT[measure]}", fontsize=10)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def piece(title: str, summary: pd.DataFrame, frame: pd.DataFrame, heads: str, figure_path: str) -> list[str]:
    accuracy = cell(summary, "none", "none", 0, "accuracy_after")
    columns = list(frame.columns)
    return [
        f"### Causal check: {title}",
        "",
        f"{int(accuracy.n_prompts)} held-out examples, {int(accuracy.n_seeds)} seeds; unedited ICL accuracy {interval(accuracy)}. "
        f"Top-1 head per seed (chosen on the select split): {heads}.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *["| " + " | ".join(str(v) for v in r) + " |" for r in frame.itertuples(index=False)],
        "",
        *[f"**{FAMILY_TEXT[f].capitalize()}.** {verdict(summary, f)}" for f in FAMILY_TEXT if f in set(summary.family)],
        "",
        f"![causal check]({figure_path})",
        "",
    ]


def heading() -> list[str]:
    return [
        "## Causal check: do the kernel heads drive the prediction?",
        "",
        "Beyond the paper's correlations: edits at the last prompt token only (the prefix untouched) on the",
        "held-out prompts, in the top-m heads by select-split agreement, in m random heads drawn from the",
        "same layers (averaged over draws) and in the m heads that agree least. Head knockout replaces each",
        "head's output by its mean over the prompt set; label-attention knockout removes the last token's",
        "attention to the label tokens; steering moves the attention on the predicted class's demonstrations",
        "onto the runner-up class's. Flip rate: share of predictions that change; margin: label logit of the",
        "original prediction minus the best other label's. Mean [bootstrap 95% CI] over held-out examples",
        "(seed-averaged); top - random is the paired difference per example.",
        "",
    ]


def render(rows: pd.DataFrame, title: str, n_resamples: int, seed: int, out: Outputs, dpi: int) -> None:
    summary = pd.DataFrame(summarize(rows, n_resamples, seed))
    frame = table(summary)
    top1 = rows[(rows.target == "top") & (rows.m == rows.m.min())].drop_duplicates("seed").sort_values("seed")
    heads = "; ".join(f"seed {s}: {h}" for s, h in zip(top1.seed, top1.heads))
    figure(summary, f"Causal check: {title}", out.figure, dpi)
    # The table page holds every number (sortable, and the CSV for other tools); report.md the digest.
    write_table(summary, out, f"Causal check: {title}", [verdict(summary, f) for f in FAMILY_TEXT if f in set(summary.family)])
    write_piece(out.piece, piece(title, summary, frame, heads, link(out.figure)))


def from_snakemake(smk) -> None:
    rows = pd.concat(
        [schemas.read_table(p, schemas.INTERVENTIONS).to_pandas().assign(seed=s) for p, s in zip(smk.input, smk.params.seeds)],
        ignore_index=True,
    )
    title = f"{smk.wildcards.model} / {smk.wildcards.task}"
    render(rows, title, smk.params.analysis["bootstrap_resamples"], smk.params.analysis["bootstrap_seed"], outputs_of(smk), smk.params.dpi)
