"""The causal check in the report: per family, target and m, what the edits did to the held-out
predictions and to ICL accuracy, with bootstrap CIs over held-out examples and the paired comparison
with two controls: random heads of the same layers and random heads matched in attention mass."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from workflow_scripts.core import stats, table_io, tables  # noqa: E402
from workflow_scripts.report.edit_families import FAMILY_TEXT, MAIN  # noqa: E402
from workflow_scripts.report.files import Outputs, link, outputs_of, write_piece, write_table  # noqa: E402

SUMMARY_COLUMNS = ("family", "target", "m", "measure", "mean", "ci_low", "ci_high", "n_prompts", "n_seeds")
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


def measures(rows: pd.DataFrame) -> pd.DataFrame:
    """Per row, the measures of one edit on one prompt; the accuracy change is paired within the prompt
    (edited minus unedited), so averaging it gives edited minus unedited accuracy on the same prompts."""
    correct_after = (rows.prediction == rows.label).astype(float)
    return rows.assign(
        flip_rate=(rows.prediction != rows.original_prediction).astype(float),
        steer_success=np.where(rows.family == "steer", rows.prediction == rows.steer_class, np.nan),
        margin_change=rows.margin_after - rows.margin_before,
        accuracy_after=correct_after,
        accuracy_change=correct_after - (rows.original_prediction == rows.label).astype(float),
    )


def per_example(rows: pd.DataFrame) -> pd.DataFrame:
    """Each measure (and the head set's attention mass) per family, target, m and held-out example,
    averaged over seeds and draws."""
    names = [*MEASURE_TEXT, MASS]
    return measures(rows).groupby(["family", "target", "m", "example_id"])[names].mean().reset_index()


def effect_summary(rows: pd.DataFrame, n_resamples: int, seed: int) -> dict[str, list]:
    """Columns SUMMARY_COLUMNS: every measure's mean with a bootstrap CI over held-out examples,
    the unedited ICL accuracy (family and target "none"), "top - random" and "top - matched", the
    paired differences per example between the top-m heads and each control, and each head set's mean
    attention mass (measure attention_mass, no CI: it is fixed on the select split)."""
    out: dict[str, list] = {name: [] for name in SUMMARY_COLUMNS}
    n_seeds = rows.seed.nunique()

    def add(family: str, target: str, m: int, measure: str, values: np.ndarray, ci: bool = True) -> None:
        values = values[~np.isnan(values)]
        if not len(values):
            return
        low, high = stats.bootstrap_ci(values, n_resamples, seed) if ci else (np.nan, np.nan)
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
        add(family, target, int(m), MASS, part[MASS].to_numpy(dtype=float), ci=False)
    for (family, m), part in examples.groupby(["family", "m"], sort=False):
        wide = part.pivot(index="example_id", columns="target")
        for control in CONTROLS:
            if {"top", control} <= set(part.target):
                for measure in MEASURE_TEXT:
                    add(family, f"top - {control}", int(m), measure, (wide[measure]["top"] - wide[measure][control]).to_numpy(dtype=float))
    return out


def cell(summary: pd.DataFrame, family: str, target: str, m: int, measure: str) -> pd.Series | None:
    row = summary[(summary.family == family) & (summary.target == target) & (summary.m == m) & (summary.measure == measure)]
    return row.iloc[0] if len(row) else None


def share(value: float) -> str:
    """A signed share in two decimals without the leading zero (+.09), as accuracies are read."""
    return f"{value:+.2f}".replace("0.", ".", 1)


def interval(row: pd.Series | None, style: str = "percent") -> str:
    """A mean and its CI as text (STYLE): shares in whole percent (signed for a paired difference),
    logit margins signed to two decimals, accuracy changes as signed shares."""
    if row is None:
        return "n/a"
    if style == "percent":
        plus = "+" if str(row.get("target", "")).startswith("top - ") else ""
        return f"{row['mean'] * 100:{plus}.0f}% [{row.ci_low * 100:.0f}, {row.ci_high * 100:.0f}]"
    if style == "share":
        return f"{share(row['mean'])} [{share(row.ci_low)}, {share(row.ci_high)}]"
    return f"{row['mean']:+.2f} [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"


def mass_text(row: pd.Series | None) -> str:
    return "n/a" if row is None else f"{row['mean']:.2f}".replace("0.", ".", 1)


def sign(row: pd.Series) -> int:
    """+1 / -1 where the 95% CI lies above / below 0, 0 where it includes 0."""
    return 1 if row.ci_low > 0 else -1 if row.ci_high < 0 else 0


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


def clause(summary: pd.DataFrame, family: str, m: int) -> str:
    """One m of a verdict: the main measure with its paired differences, the accuracy change, the reading."""
    main, change = (cell(summary, family, "top", m, measure) for measure in (MAIN[family], "accuracy_change"))
    diffs = {c: cell(summary, family, f"top - {c}", m, MAIN[family]) for c in CONTROLS}
    compared = ", ".join(f"top - {CONTROLS[c]} {interval(d)}" for c, d in diffs.items() if d is not None)
    what = "flips {} of predictions" if family != "steer" else "moves {} of predictions to the steered class"
    accuracy = sign(change)
    effect = {0: "but does not change", 1: "but raises", -1: "and lowers"}[accuracy]
    unbeaten = [c for c, d in diffs.items() if d is None or d.ci_low <= 0]
    return (f"m = {m}: {what.format(interval(main))} ({compared or 'no control'}) {effect} ICL accuracy "
            f"({interval(change, 'share')}): {reading(main.ci_low > 0, accuracy, unbeaten)}")


def mass_line(summary: pd.DataFrame, family: str, ms: list[int]) -> str:
    """The match, for a reader to check: each head set's mean attention mass, per m."""
    per_m = [f"m = {m}: " + ", ".join(f"{CONTROLS.get(t, t)} {mass_text(cell(summary, family, t, m, MASS))}"
                                      for t in ("top", *CONTROLS)) for m in ms]
    return f"Mean attention mass on {MASS_TEXT[family]} (select split), {'; '.join(per_m)}"


def verdict(summary: pd.DataFrame, family: str) -> str:
    """One honest sentence per family: does editing the kernel heads change predictions beyond both
    controls, and does it change ICL accuracy (flips without an accuracy change do not show that the
    heads drive the correct prediction)?"""
    tops = summary[(summary.family == family) & (summary.target == "top") & (summary.measure == MAIN[family])]
    if tops.empty:
        return f"{FAMILY_TEXT[family].capitalize()}: no prompt could be edited."
    if stats.too_few(tops.n_prompts.min()):
        return f"{FAMILY_TEXT[family].capitalize()}: " + stats.too_few_text(tops.n_prompts.min(), "edited held-out prompts", "interventions.prompts, analysis.n_heldout")
    ms = sorted(int(m) for m in tops.m)
    clauses = "; ".join(clause(summary, family, m) for m in ms)
    return f"{FAMILY_TEXT[family].capitalize()} in the top-m kernel heads: {clauses}. {mass_line(summary, family, ms)}."


def table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per family, m and target, the main measure, the accuracy change and after, the margin change and
    the head set's attention mass, as text."""
    records = []
    for (family, m), part in summary[summary.family != "none"].groupby(["family", "m"], sort=False):
        for target in (*TARGETS, *(f"top - {c}" for c in CONTROLS)):
            record = {"family": FAMILY_TEXT[family], "m": int(m), "heads": target}
            for measure in (MAIN[family], "accuracy_change", "accuracy_after", "margin_change"):
                row = cell(part, family, target, int(m), measure)
                record[MEASURE_TEXT[measure] if measure != MAIN[family] else "main measure"] = interval(row, STYLE[measure])
            record["attention mass"] = mass_text(cell(part, family, target, int(m), MASS)) if target in TARGETS else ""
            records.append(record)
    return pd.DataFrame(records)


def figure(summary: pd.DataFrame, title: str, out: str, dpi: int) -> None:
    """Per family: the main measure, the ICL accuracy change and the margin change per m, top / random /
    matched / bottom heads, with CIs."""
    families = [f for f in FAMILY_TEXT if f in set(summary.family)]
    rows = ("main", "accuracy_change", "margin_change")
    fig, axes = plt.subplots(len(rows), len(families), figsize=(4.2 * len(families), 9), squeeze=False, constrained_layout=True)
    width = 0.8 / len(COLOURS)
    for col, family in enumerate(families):
        part = summary[summary.family == family]
        ms = sorted(part.m.unique())
        for row, measure in enumerate(MAIN[family] if r == "main" else r for r in rows):
            ax = axes[row, col]
            for i, target in enumerate(COLOURS):
                cells = [cell(part, family, target, m, measure) for m in ms]
                x = np.arange(len(ms)) + (i - (len(COLOURS) - 1) / 2) * width
                mean = np.array([c["mean"] if c is not None else np.nan for c in cells])
                err = np.array([[c["mean"] - c.ci_low, c.ci_high - c["mean"]] if c is not None else [np.nan, np.nan] for c in cells]).T
                ax.bar(x, mean, width, yerr=err, color=COLOURS[target], label=f"{CONTROLS.get(target, target)} m heads", capsize=3)
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


def write_causal_check_section(rows: pd.DataFrame, title: str, n_resamples: int, seed: int, out: Outputs, dpi: int) -> None:
    summary = pd.DataFrame(effect_summary(rows, n_resamples, seed))
    frame = table(summary)
    top1 = rows[(rows.target == "top") & (rows.m == rows.m.min())].drop_duplicates("seed").sort_values("seed")
    heads = "; ".join(f"seed {s}: {h}" for s, h in zip(top1.seed, top1.heads))
    figure(summary, f"Causal check: {title}", out.figure, dpi)
    # The table page holds every number (sortable, and the CSV for other tools); report.md the digest.
    write_table(summary, out, f"Causal check: {title}", [verdict(summary, f) for f in FAMILY_TEXT if f in set(summary.family)])
    write_piece(out.piece, piece(title, summary, frame, heads, link(out.figure)))


def from_snakemake(smk) -> None:
    rows = pd.concat(
        [table_io.read_table(p, tables.INTERVENTIONS).to_pandas().assign(seed=s) for p, s in zip(smk.input, smk.params.seeds)],
        ignore_index=True,
    )
    title = f"{smk.wildcards.model} / {smk.wildcards.task}"
    write_causal_check_section(rows, title, smk.params.analysis["bootstrap_resamples"], smk.params.analysis["bootstrap_seed"],
                               outputs_of(smk), smk.params.dpi)
