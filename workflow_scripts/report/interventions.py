"""The causal check in the report: per family, target and m, what the edits did to the held-out
predictions and to ICL accuracy, with bootstrap CIs over held-out examples and the paired comparison
with two controls: random heads of the same layers and random heads matched in attention mass."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from workflow_scripts.analysis import table2_rows  # noqa: E402
from workflow_scripts.core import stats, tables  # noqa: E402
from workflow_scripts.core import aggregate  # noqa: E402
from workflow_scripts.report import frames  # noqa: E402
from workflow_scripts.report.edit_families import FAMILY_TEXT, MAIN  # noqa: E402
from workflow_scripts.report.files import Outputs, link, outputs_of, write_piece, write_table  # noqa: E402

SUMMARY_COLUMNS = ("family", "target", "m", "measure", "mean", "ci_low", "ci_high", "n_prompts", "n_seeds")
SUMMARY_SCHEMA = dict(zip(SUMMARY_COLUMNS, (pl.String, pl.String, pl.Int64, pl.String, pl.Float64, pl.Float64, pl.Float64,
                                            pl.Int64, pl.Int64)))
MEASURE_TEXT = {
    "flip_rate": "flip rate",
    "steer_success": "steered to the runner-up",
    "margin_change": "margin change",
    "accuracy_after": "ICL accuracy after",
    "accuracy_change": "ICL accuracy change",
}
# How each measure is written: shares in whole percent, logit margins and accuracy changes signed.
STYLE = {"flip_rate": "percent", "steer_success": "percent", "accuracy_after": "percent",
         "margin_change": "logit", "accuracy_change": "share"}
# A property of the head set, not of an edit: reported as a mean, without an interval over examples.
MASS = "attention_mass"
MASS_TEXT = {"knockout": "the demonstrations", "label_knockout": "the demonstrations",
             "steer": "the predicted class's demonstrations"}
CONTROLS = {"random": "same-layer random", "matched": "matched"}
TARGETS = ("top", *CONTROLS, "bottom")
COLOURS = {"top": "#b91c1c", "random": "#64748b", "matched": "#a16207", "bottom": "#0369a1"}


def share_of(condition: pl.Expr) -> pl.Expr:
    """A condition per row as 1.0 or 0.0, so that its mean is the share of rows where it holds."""
    return condition.cast(pl.Float64)


def measures(rows: pl.DataFrame) -> pl.DataFrame:
    """Per row, the measures of one edit on one prompt (steer_success missing outside steering); the
    accuracy change is paired within the prompt (edited minus unedited), so averaging it gives edited
    minus unedited accuracy on the same prompts."""
    correct_after = share_of(pl.col("prediction") == pl.col("label"))
    return rows.with_columns(
        flip_rate=share_of(pl.col("prediction") != pl.col("original_prediction")),
        steer_success=pl.when(pl.col("family") == "steer").then(share_of(pl.col("prediction") == pl.col("steer_class"))),
        margin_change=pl.col("margin_after") - pl.col("margin_before"),
        accuracy_after=correct_after,
        accuracy_change=correct_after - share_of(pl.col("original_prediction") == pl.col("label")),
    )


def per_example(rows: pl.DataFrame) -> pl.DataFrame:
    """Each measure (and the head set's attention mass) per family, target, m and held-out example,
    averaged over seeds and draws."""
    return aggregate.group_stats(measures(rows), ["family", "target", "m", "example_id"], [*MEASURE_TEXT, MASS])


def by_example(part: pl.DataFrame, target: str, measure: str) -> dict[str, float]:
    rows = part.filter(pl.col("target") == target)
    return dict(zip(rows["example_id"], aggregate.values_of(rows[measure])))


def paired(part: pl.DataFrame, measure: str, control: str) -> np.ndarray:
    """Per held-out example of one family and m (in example order), the top heads' value minus the
    control's; NaN where either is missing."""
    top, other = by_example(part, "top", measure), by_example(part, control, measure)
    return np.array([top.get(e, np.nan) - other.get(e, np.nan) for e in part["example_id"].unique().sort()], dtype=float)


def effect_summary(rows: pl.DataFrame, n_resamples: int, seed: int) -> dict[str, list]:
    """Columns SUMMARY_COLUMNS: every measure's mean with a bootstrap CI over held-out examples,
    the unedited ICL accuracy (family and target "none"), "top - random" and "top - matched", the
    paired differences per example between the top-m heads and each control, and each head set's mean
    attention mass (measure attention_mass, no CI: it is fixed on the select split)."""
    out: dict[str, list] = {name: [] for name in SUMMARY_COLUMNS}
    n_seeds = rows["seed"].drop_nulls().n_unique()

    def add(family: str, target: str, m: int, measure: str, values: np.ndarray, ci: bool = True) -> None:
        values = values[~np.isnan(values)]
        if not len(values):
            return
        low, high = stats.bootstrap_ci(values, n_resamples, seed) if ci else (np.nan, np.nan)
        row = {"family": family, "target": target, "m": m, "measure": measure, "mean": float(values.mean()),
               "ci_low": low, "ci_high": high, "n_prompts": len(values), "n_seeds": n_seeds}
        for name in out:
            out[name].append(row[name])

    unedited = rows.unique(["seed", "prompt_id"], keep="first", maintain_order=True).with_columns(
        correct=share_of(pl.col("original_prediction") == pl.col("label")))
    add("none", "none", 0, "accuracy_after", aggregate.values_of(aggregate.group_stats(unedited, ["example_id"], ["correct"])["correct"]))
    examples = per_example(rows)
    for part in examples.partition_by(["family", "target", "m"], maintain_order=True):
        family, target, m = part.row(0)[:3]
        for measure in MEASURE_TEXT:
            add(family, target, int(m), measure, aggregate.values_of(part[measure]))
        add(family, target, int(m), MASS, aggregate.values_of(part[MASS]), ci=False)
    for part in examples.partition_by(["family", "m"], maintain_order=True):
        family, m = part["family"][0], part["m"][0]
        for control in CONTROLS:
            if {"top", control} <= set(part["target"]):
                for measure in MEASURE_TEXT:
                    add(family, f"top - {control}", int(m), measure, paired(part, measure, control))
    return out


def cell(summary: pl.DataFrame, family: str, target: str, m: int, measure: str) -> dict | None:
    return frames.first_row(summary.filter((pl.col("family") == family) & (pl.col("target") == target) & (pl.col("m") == m)
                                           & (pl.col("measure") == measure)))


def share(value: float) -> str:
    """A signed share in two decimals without the leading zero (+.09), as accuracies are read."""
    return f"{value:+.2f}".replace("0.", ".", 1)


def interval(row: dict | None, style: str = "percent") -> str:
    """A mean and its CI as text (STYLE): shares in whole percent (signed for a paired difference),
    logit margins signed to two decimals, accuracy changes as signed shares."""
    if row is None:
        return "n/a"
    if style == "percent":
        plus = "+" if str(row.get("target", "")).startswith("top - ") else ""
        return f"{row['mean'] * 100:{plus}.0f}% [{row['ci_low'] * 100:.0f}, {row['ci_high'] * 100:.0f}]"
    if style == "share":
        return f"{share(row['mean'])} [{share(row['ci_low'])}, {share(row['ci_high'])}]"
    return f"{row['mean']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"


def mass_text(row: dict | None) -> str:
    return "n/a" if row is None else f"{row['mean']:.2f}".replace("0.", ".", 1)


def sign(row: dict) -> int:
    """+1 / -1 where the 95% CI lies above / below 0, 0 where it includes 0."""
    return 1 if row["ci_low"] > 0 else -1 if row["ci_high"] < 0 else 0


def reading(moved: bool, accuracy: int, unbeaten: list[str]) -> str:
    """What one m's numbers show: the heads drive the correct prediction only if the edit changes
    predictions, lowers ICL accuracy, and does so more than every control."""
    if not moved:
        return "these heads are not shown to drive the prediction"
    if accuracy == 0:
        return "these heads move the prediction, not toward the correct answer, so they are not shown to drive the correct prediction"
    if accuracy > 0:
        return "these heads pull the prediction away from the correct answer, so they are not shown to drive the correct prediction"
    if unbeaten:
        return (f"it changes no more predictions than in {' or '.join(CONTROLS[c] + ' heads' for c in unbeaten)}: "
                "not shown to be specific to the kernel heads")
    return "these heads drive the correct prediction, beyond heads of the same layers and of matched attention mass"


def clause(summary: pl.DataFrame, family: str, m: int) -> str:
    """One m of a verdict: the main measure with its paired differences, the accuracy change, the reading."""
    main, change = (cell(summary, family, "top", m, measure) for measure in (MAIN[family], "accuracy_change"))
    diffs = {c: cell(summary, family, f"top - {c}", m, MAIN[family]) for c in CONTROLS}
    compared = ", ".join(f"top - {CONTROLS[c]} {interval(d)}" for c, d in diffs.items() if d is not None)
    what = "flips {} of predictions" if family != "steer" else "moves {} of predictions to the steered class"
    accuracy = sign(change)
    effect = {0: "but does not change", 1: "but raises", -1: "and lowers"}[accuracy]
    unbeaten = [c for c, d in diffs.items() if d is None or d["ci_low"] <= 0]
    return (f"m = {m}: {what.format(interval(main))} ({compared or 'no control'}) {effect} ICL accuracy "
            f"({interval(change, 'share')}): {reading(main['ci_low'] > 0, accuracy, unbeaten)}")


def mass_line(summary: pl.DataFrame, family: str, ms: list[int]) -> str:
    """The match, for a reader to check: each head set's mean attention mass, per m."""
    per_m = [f"m = {m}: " + ", ".join(f"{CONTROLS.get(t, t)} {mass_text(cell(summary, family, t, m, MASS))}"
                                      for t in ("top", *CONTROLS)) for m in ms]
    return f"Mean attention mass on {MASS_TEXT[family]} (select split), {'; '.join(per_m)}"


def verdict(summary: pl.DataFrame, family: str) -> str:
    """One honest sentence per family: does editing the kernel heads change predictions beyond both
    controls, and does it change ICL accuracy (flips without an accuracy change do not show that the
    heads drive the correct prediction)?"""
    tops = summary.filter((pl.col("family") == family) & (pl.col("target") == "top") & (pl.col("measure") == MAIN[family]))
    if tops.is_empty():
        return f"{FAMILY_TEXT[family].capitalize()}: no prompt could be edited."
    if stats.too_few(tops["n_prompts"].min()):
        return f"{FAMILY_TEXT[family].capitalize()}: " + stats.too_few_text(tops["n_prompts"].min(), "edited held-out prompts", "interventions.prompts, analysis.n_heldout")
    ms = sorted(int(m) for m in tops["m"])
    clauses = "; ".join(clause(summary, family, m) for m in ms)
    return f"{FAMILY_TEXT[family].capitalize()} in the top-m kernel heads: {clauses}. {mass_line(summary, family, ms)}."


def table(summary: pl.DataFrame) -> pl.DataFrame:
    """Per family, m and target, the main measure, the accuracy change and after, the margin change and
    the head set's attention mass, as text."""
    records = []
    for part in summary.filter(pl.col("family") != "none").partition_by(["family", "m"], maintain_order=True):
        family, m = part["family"][0], part["m"][0]
        for target in (*TARGETS, *(f"top - {c}" for c in CONTROLS)):
            record = {"family": FAMILY_TEXT[family], "m": int(m), "heads": target}
            for measure in (MAIN[family], "accuracy_change", "accuracy_after", "margin_change"):
                row = cell(part, family, target, int(m), measure)
                record[MEASURE_TEXT[measure] if measure != MAIN[family] else "main measure"] = interval(row, STYLE[measure])
            record["attention mass"] = mass_text(cell(part, family, target, int(m), MASS)) if target in TARGETS else ""
            records.append(record)
    return pl.DataFrame(records)


def figure(summary: pl.DataFrame, title: str, out: str, dpi: int) -> None:
    """Per family: the main measure, the ICL accuracy change and the margin change per m, top / random /
    matched / bottom heads, with CIs."""
    families = [f for f in FAMILY_TEXT if f in set(summary["family"])]
    rows = ("main", "accuracy_change", "margin_change")
    fig, axes = plt.subplots(len(rows), len(families), figsize=(4.2 * len(families), 9), squeeze=False, constrained_layout=True)
    width = 0.8 / len(COLOURS)
    for col, family in enumerate(families):
        part = summary.filter(pl.col("family") == family)
        ms = sorted(part["m"].unique())
        for row, measure in enumerate(MAIN[family] if r == "main" else r for r in rows):
            ax = axes[row, col]
            for i, target in enumerate(COLOURS):
                cells = [cell(part, family, target, m, measure) for m in ms]
                x = np.arange(len(ms)) + (i - (len(COLOURS) - 1) / 2) * width
                mean = np.array([c["mean"] if c is not None else np.nan for c in cells])
                err = np.array([[c["mean"] - c["ci_low"], c["ci_high"] - c["mean"]] if c is not None else [np.nan, np.nan] for c in cells]).T
                ax.bar(x, mean, width, yerr=err, color=COLOURS[target], label=f"{CONTROLS.get(target, target)} m heads", capsize=3)
            ax.set_xticks(np.arange(len(ms)), [f"m={m}" for m in ms])
            ax.axhline(0, color="black", lw=0.6)
            ax.set_title(f"{FAMILY_TEXT[family]}: {MEASURE_TEXT[measure]}", fontsize=10)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def piece(title: str, summary: pl.DataFrame, frame: pl.DataFrame, heads: str, figure_path: str) -> list[str]:
    accuracy = cell(summary, "none", "none", 0, "accuracy_after")
    columns = list(frame.columns)
    return [
        f"### Causal check: {title}",
        "",
        f"{int(accuracy['n_prompts'])} held-out examples, {int(accuracy['n_seeds'])} seeds; unedited ICL accuracy {interval(accuracy)}. "
        f"Top-1 head per seed (chosen on the select split): {heads}.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *["| " + " | ".join(str(v) for v in r) + " |" for r in frame.iter_rows()],
        "",
        *[f"**{FAMILY_TEXT[f].capitalize()}.** {verdict(summary, f)}" for f in FAMILY_TEXT if f in set(summary["family"])],
        "",
        f"![causal check]({figure_path})",
        "",
    ]


def write_causal_check_section(rows: pl.DataFrame, title: str, n_resamples: int, seed: int, out: Outputs, dpi: int) -> None:
    summary = pl.DataFrame(effect_summary(rows, n_resamples, seed), schema=SUMMARY_SCHEMA)
    frame = table(summary)
    top1 = (rows.filter((pl.col("target") == "top") & (pl.col("m") == pl.col("m").min()))
            .unique("seed", keep="first", maintain_order=True).sort("seed", maintain_order=True))
    heads = "; ".join(f"seed {s}: {h}" for s, h in zip(top1["seed"], top1["heads"]))
    figure(summary, f"Causal check: {title}", out.figure, dpi)
    # The table page holds every number (sortable, and the CSV for other tools); report.md the digest.
    write_table(summary, out, f"Causal check: {title}", [verdict(summary, f) for f in FAMILY_TEXT if f in set(summary["family"])])
    write_piece(out.piece, piece(title, summary, frame, heads, link(out.figure)))


def from_snakemake(smk) -> None:
    rows = aggregate.as_nulls(table2_rows.read_seeds(list(smk.input), smk.params.seeds, tables.INTERVENTIONS))
    title = f"{smk.wildcards.model} / {smk.wildcards.task}"
    write_causal_check_section(rows, title, smk.params.analysis["bootstrap_resamples"], smk.params.analysis["bootstrap_seed"],
                               outputs_of(smk), smk.params.dpi)
