"""The report's Section 4.2 part, one rule per ablation: a figure with 95% CIs, the table of each
setting's means, and one plain sentence on whether the kernel explanation's prediction held."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from workflow_scripts.core import paper, stats, table_io, tables  # noqa: E402
from workflow_scripts.core import aggregate  # noqa: E402
from workflow_scripts.report import frames  # noqa: E402
from workflow_scripts.report.files import Outputs, link, outputs_of, write_piece, write_table  # noqa: E402

METRIC_TEXT = {
    "icl_accuracy": "ICL accuracy",
    "agreement": "head agreement with ICL",
    "head_accuracy": "head accuracy",
    "entropy": "kernel entropy (1 = uniform)",
    "demo_similarity": "demo similarity to query",
    "n_demos": "k",
}
PANELS = {
    "retrieval": ["icl_accuracy", "agreement", "entropy", "demo_similarity"],
    "labels": ["icl_accuracy", "agreement", "head_accuracy"],
    "typos": ["icl_accuracy", "agreement", "head_accuracy"],
    "k": ["icl_accuracy", "agreement", "entropy"],
    "order": ["icl_changed", "head_changed"],
}
NOTES = {
    "retrieval": "Class balance: a setting with balanced retrieval takes the most (least) similar examples within each class, "
                 "as many per class as random sampling would, so only the inputs change; a setting with balanced: false "
                 "takes the plain top k, whatever their labels (the label mix then follows the neighbours).",
    "labels": "Every format shows the same demonstrations as the baseline; `random` keeps the words but draws each "
              "demonstration's label at random (the control), so accuracy there is against the true test label.",
    "typos": "Noise is seeded per prompt, so the test input carries the same typos whether or not the demonstrations do.",
    "k": "Settings with other k draw their own random demonstrations.",
    "order": "Each order setting shuffles the baseline's own demonstrations.",
}
# The paper's sst2 ICL accuracy, clean (Table 2) and with typos, as the typos prediction quotes them.
SST2_CLEAN = f"{paper.TABLE2['icl accuracy']['sst2']:.3f}".removeprefix("0")
SST2_TYPOS = f"{paper.SST2_WITH_TYPOS:.3f}".removeprefix("0")
PREDICTION = {
    "retrieval": "similar demonstrations should narrow the kernel (lower entropy) and raise ICL accuracy; dissimilar ones the reverse.",
    "labels": "the output is a vote over the demonstrations' label tokens, so the label format should matter while the head keeps tracking the vote.",
    "typos": f"out-of-distribution inputs should hurt (paper, GPT-J on sst2: {SST2_CLEAN} clean, {SST2_TYPOS} with typos).",
    "k": "as k grows, ICL should approach the kernel regression (Theorem 1's n -> infinity).",
    "order": "a kernel regression is order-invariant; ICL is not, and this measures by how much.",
}


def value(summary: pl.DataFrame, task: str, setting: str, metric: str) -> dict | None:
    return frames.first_row(summary.filter((pl.col("task") == task) & (pl.col("setting") == setting) & (pl.col("metric") == metric)))


def moved(shift: dict) -> bool:
    """Whether a paired difference's 95% interval excludes zero."""
    return shift["ci_low"] > 0 or shift["ci_high"] < 0


def shift_text(shift: dict) -> str:
    return f"{shift['mean']:+.3f} [{shift['ci_low']:+.3f}, {shift['ci_high']:+.3f}]"


def between_settings() -> pl.Expr:
    """The k ablation's rows that compare two settings directly ("k16 vs k2")."""
    return pl.col("setting").str.contains(" vs ", literal=True)


def setting_shifts(summary: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Each setting's paired difference to the baseline (not the k ablation's between-settings rows)."""
    return summary.filter((pl.col("metric") == f"{metric}_shift") & ~between_settings())


def number(metric: str, value: float) -> str:
    if np.isnan(value):
        return ""
    return f"{value:.0f}" if metric == "n_demos" else f"{value:.3f}"


def conclusion(kind: str, summary: pl.DataFrame, baseline: str) -> str:
    """Whether the kernel view's prediction held, in one sentence, judged by paired 95% CIs of the
    difference to the baseline (every setting shows the same test inputs)."""
    fewest = summary["n_prompts"].min()
    if stats.too_few(fewest):
        return stats.too_few_text(fewest, "held-out inputs per setting", "analysis.ablation_prompts, analysis.n_heldout")
    if kind == "order":
        icl = aggregate.mean(summary.filter(pl.col("metric") == "icl_changed")["mean"])
        return (f"Where the explanation stops: the ICL prediction depends on order for {icl:.0%} of prompts, "
                "which no kernel regression can produce.")
    if kind == "k":
        gains = frames.rows(summary.filter((pl.col("metric") == "agreement_shift") & between_settings()))
        texts = [f"{r['task']} {r['setting']}: {shift_text(r)}" for r in gains]
        if any(moved(r) and r["mean"] > 0 for r in gains):
            return f"Held: head agreement with ICL rises from the smallest to the largest k ({'; '.join(texts)})."
        return f"Not established: head agreement with ICL does not rise from the smallest to the largest k beyond the paired CI ({'; '.join(texts)})."
    shifts = frames.rows(setting_shifts(summary, "icl_accuracy"))
    up = [f"{r['task']}/{r['setting']}" for r in shifts if moved(r) and r["mean"] > 0]
    down = [f"{r['task']}/{r['setting']}" for r in shifts if moved(r) and r["mean"] < 0]
    if kind == "retrieval":
        up = [s for s in up if "/dis" not in s]
        entropy = frames.rows(setting_shifts(summary, "entropy").filter(pl.col("setting").str.starts_with("similar")))
        narrower = [f"{r['task']}/{r['setting']}" for r in entropy if moved(r) and r["mean"] < 0]
        word = "Held" if up and narrower else "Partly held" if up or narrower else "Not established"
        return (f"{word}: similar demonstrations "
                + (f"raised ICL accuracy ({', '.join(up)})" if up else "did not raise ICL accuracy")
                + (" and " if bool(up) == bool(narrower) else " but ")
                + (f"narrowed the head's kernel ({', '.join(narrower)})" if narrower else "did not narrow the head's kernel")
                + ", by paired 95% CIs.")
    if kind == "labels":
        return (f"Held: the label format changes ICL accuracy (paired 95% CI excludes 0: {', '.join(up + down)})." if up + down
                else "Not established: no label format moved ICL accuracy beyond the paired 95% CI.")
    return (f"Held: typos lowered ICL accuracy (paired 95% CI below 0: {', '.join(down)})." if down
            else "Not established: typos did not lower ICL accuracy beyond the paired 95% CI.")


def verdict(kind: str, summary: pl.DataFrame, baseline: str) -> str:
    """Per task, each setting's ICL accuracy and its paired difference to the baseline."""
    parts = []
    for task in summary["task"].unique(maintain_order=True):
        if kind == "order":
            icl, head = value(summary, task, "any order", "icl_changed"), value(summary, task, "any order", "head_changed")
            parts.append(f"{task}: the ICL prediction changes with order for {icl['mean']:.0%} of prompts and the head's "
                         f"kernel prediction for {head['mean']:.0%}")
            continue
        base = value(summary, task, baseline, "icl_accuracy")
        shifts = setting_shifts(summary, "icl_accuracy").filter(pl.col("task") == task)
        diffs = []
        for shift in frames.rows(shifts):
            acc = value(summary, task, shift["setting"], "icl_accuracy")
            text = f"{shift['setting']} {acc['mean']:.3f} (difference {shift_text(shift)})"
            if kind in ("retrieval", "k"):
                ent, ent0 = value(summary, task, shift["setting"], "entropy"), value(summary, task, baseline, "entropy")
                text += f", entropy {ent['mean']:.3f} vs {ent0['mean']:.3f}"
            diffs.append(text)
        parts.append(f"{task}: ICL accuracy {base['mean']:.3f} with {baseline}; " + "; ".join(diffs))
    return ". ".join(parts) + "."


def setting_order(summary: pl.DataFrame, task: str, baseline: str, kind: str, settings: list[str]) -> list[str]:
    """Baseline first, then as configured; a k ablation runs in order of k."""
    if kind == "k":
        k = {r["setting"]: r["mean"] for r in frames.rows(summary.filter((pl.col("task") == task) & (pl.col("metric") == "n_demos")))}
        return sorted(settings, key=lambda s: k.get(s, np.inf))
    return sorted(settings, key=lambda s: s != baseline)


def figure(kind: str, summary: pl.DataFrame, baseline: str, title: str, out: Path, dpi: int) -> None:
    metrics = PANELS[kind]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        part = summary.filter(pl.col("metric") == metric)
        for n, task in enumerate(part["task"].drop_nulls().unique(maintain_order=True)):
            by_setting = {r["setting"]: r for r in frames.rows(part.filter(pl.col("task") == task))}
            order = setting_order(summary, task, baseline, kind, list(by_setting))
            mean, low, high = (np.array([by_setting[s][c] for s in order], dtype=float) for c in ("mean", "ci_low", "ci_high"))
            x = np.arange(len(order)) + 0.1 * n
            ax.errorbar(x, mean, yerr=[mean - low, high - mean], fmt="o-" if kind in ("k", "typos") else "o", capsize=3, label=task)
            ax.set_xticks(np.arange(len(order)), order, rotation=40, ha="right", fontsize=8)
        ax.set_title(METRIC_TEXT.get(metric, metric.replace("_", " ")), fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{title} (95% CIs over held-out prompts)")
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def means_table(kind: str, summary: pl.DataFrame) -> pl.DataFrame:
    """Per task and setting (columns task, setting), the mean of every metric (not the paired differences):
    tasks, settings and metrics each in the order they first appear, a (task, setting) or a metric without
    any mean left out."""
    keys = ["task", "setting", "metric"]
    shown = summary.filter(~pl.col("metric").str.ends_with("_shift"))
    shown = shown if kind == "k" else shown.filter(pl.col("metric") != "n_demos")
    means = aggregate.group_stats(shown, keys, ["mean"], sort=False).drop_nulls("mean")
    rank = {key: {v: i for i, v in enumerate(shown[key].drop_nulls().unique(maintain_order=True))} for key in keys}
    metrics = sorted(means["metric"].unique(), key=rank["metric"].get)
    cells = {(r["task"], r["setting"], r["metric"]): r["mean"] for r in means.iter_rows(named=True)}
    pairs = sorted({(r["task"], r["setting"]) for r in means.iter_rows(named=True)},
                   key=lambda pair: (rank["task"][pair[0]], rank["setting"][pair[1]]))
    columns = {"task": [t for t, _ in pairs], "setting": [s for _, s in pairs]}
    columns |= {m: [cells.get((t, s, m)) for t, s in pairs] for m in metrics}
    return aggregate.as_nulls(pl.DataFrame(columns, schema={**dict.fromkeys(["task", "setting"], pl.String), **dict.fromkeys(metrics, pl.Float64)}))


def sample(summary: pl.DataFrame, baseline: str) -> str:
    """What the ablation measured on: held-out test inputs and seeds per task (its baseline is not
    Table 2's, which reads every held-out prompt of every study seed)."""
    rows = frames.rows(summary.filter((pl.col("setting") == baseline) & (pl.col("metric") == "icl_accuracy")))
    per_task = ", ".join(f"{r['task']}: {int(r['n_prompts'])} held-out inputs x {int(r['n_seeds'])} seed{'s' * (r['n_seeds'] > 1)}"
                         for r in rows)
    return (f"Sample: {per_task} (analysis.ablation_prompts of Table 2's held-out prompts, on the ablation's seeds), "
            "so its baseline accuracy can differ from Table 2's.")


def piece(name: str, kind: str, table: pl.DataFrame, finding: tuple[str, str], figure: str, sampled: str = "") -> list[str]:
    """The ablation's part of results/report.md: prediction, table of means (means_table's), verdict
    (conclusion, measured numbers), figure."""
    header = table.columns[2:]
    return [
        f"### {name} ({kind})",
        "",
        f"Kernel view: {PREDICTION[kind]} {NOTES[kind]}",
        "",
        *([sampled, ""] if sampled else []),
        "| task | setting | " + " | ".join(METRIC_TEXT.get(m, m.replace("_", " ")) for m in header) + " |",
        "|---|---|" + "---|" * len(header),
        *[f"| {row['task']} | {row['setting']} | " + " | ".join(number(m, row[m]) for m in header) + " |"
          for row in frames.rows(table)],
        "",
        f"**{finding[0]}** Measured: {finding[1]}",
        "",
        f"![{name}]({figure})",
        "",
    ]


def write_ablation_section(name: str, kind: str, baseline: str, summary: pl.DataFrame, model: str, out: Outputs, dpi: int) -> None:
    figure(kind, summary, baseline, f"{model}: {name}", out.figure, dpi)
    table = means_table(kind, summary)
    finding = conclusion(kind, summary, baseline), verdict(kind, summary, baseline)
    sampled = sample(summary, baseline)
    write_table(table, out, f"{model}: {name} ablation ({kind}), mean per setting", [
        f"{finding[0]} Measured: {finding[1]}",
        f"Kernel view: {PREDICTION[kind]} {NOTES[kind]}",
        sampled,
    ])
    write_piece(out.piece, piece(name, kind, table, finding, link(out.figure), sampled))


def from_snakemake(smk) -> None:
    summary = frames.frame_of(table_io.read_table(smk.input[0], tables.ABLATION_SUMMARY))
    write_ablation_section(smk.wildcards.ablation, smk.params.kind, smk.params.baseline, summary, smk.wildcards.model,
                           outputs_of(smk), smk.params.dpi)
