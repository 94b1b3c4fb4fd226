"""The report's Section 4.2 part: one figure per ablation with 95% CIs and one plain sentence on
whether the kernel explanation's prediction held."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

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
PREDICTION = {
    "retrieval": "similar demonstrations should narrow the kernel (lower entropy) and raise ICL accuracy; dissimilar ones the reverse.",
    "labels": "the output is a vote over the demonstrations' label tokens, so the label format should matter while the head keeps tracking the vote.",
    "typos": "out-of-distribution inputs should hurt (paper, GPT-J on sst2: .805 clean, .534 with typos).",
    "k": "as k grows, ICL should approach the kernel regression (Theorem 1's n -> infinity).",
    "order": "a kernel regression is order-invariant; ICL is not, and this measures by how much.",
}


def value(summary: pd.DataFrame, task: str, setting: str, metric: str) -> pd.Series | None:
    row = summary[(summary.task == task) & (summary.setting == setting) & (summary.metric == metric)]
    return None if row.empty else row.iloc[0]


def separated(a: pd.Series, b: pd.Series) -> bool:
    """Whether two 95% intervals do not overlap (a conservative test of a difference)."""
    return a.ci_low > b.ci_high or b.ci_low > a.ci_high


def number(metric: str, value: float) -> str:
    if np.isnan(value):
        return ""
    return f"{value:.0f}" if metric == "n_demos" else f"{value:.3f}"


def conclusion(kind: str, summary: pd.DataFrame, baseline: str) -> str:
    """Whether the kernel view's prediction held, in one sentence, judged by non-overlapping 95% CIs."""
    def metric_rows(metric: str) -> pd.DataFrame:
        return summary[summary.metric == metric]

    if kind == "order":
        icl = metric_rows("icl_changed")["mean"].mean()
        return (f"Where the explanation stops: the ICL prediction depends on order for {icl:.0%} of prompts, "
                "which no kernel regression can produce.")
    base = {t: value(summary, t, baseline, "icl_accuracy") for t in summary.task.unique()}
    acc = metric_rows("icl_accuracy")
    others = acc[acc.setting != baseline]
    apart = [(r.task, r.setting, r["mean"] > base[r.task]["mean"]) for _, r in others.iterrows() if separated(r, base[r.task])]
    if kind == "retrieval":
        up = [f"{t}/{s}" for t, s, higher in apart if higher and "dis" not in s]
        narrower = all(value(summary, t, s, "entropy")["mean"] < value(summary, t, baseline, "entropy")["mean"]
                       for t in base for s in others[others.task == t].setting if s.startswith("similar"))
        if up:
            return f"Held: similar demonstrations raised ICL accuracy beyond the intervals ({', '.join(up)})."
        return ("Not established: similar demonstrations " + ("narrowed the head's kernel" if narrower else "did not narrow the kernel everywhere")
                + " and accuracy moved in the predicted direction only within overlapping 95% CIs.")
    if kind == "labels":
        return ("Held: the label format changes ICL accuracy beyond the intervals." if apart
                else "Not established: no label format moved ICL accuracy outside the intervals.")
    if kind == "typos":
        down = [f"{t}/{s}" for t, s, higher in apart if not higher]
        return (f"Held: typos lowered ICL accuracy beyond the intervals ({', '.join(down)})." if down
                else "Not established: typos did not lower ICL accuracy outside the intervals.")
    agree = metric_rows("agreement").merge(metric_rows("n_demos")[["task", "setting", "mean"]], on=["task", "setting"], suffixes=("", "_k"))
    trend = np.mean([np.corrcoef(g.mean_k, g["mean"])[0, 1] for _, g in agree.groupby("task") if len(g) > 2])
    return (f"Head agreement with ICL vs. k has a correlation of {trend:.2f} across k: "
            + ("it rises with k, as the theorem's n -> infinity suggests." if trend > 0 else "it does not rise with k."))


def verdict(kind: str, summary: pd.DataFrame, baseline: str) -> str:
    """One honest sentence per task on whether the kernel view's prediction held."""
    parts = []
    for task in summary.task.unique():
        if kind == "order":
            icl, head = value(summary, task, "any order", "icl_changed"), value(summary, task, "any order", "head_changed")
            parts.append(f"{task}: the ICL prediction changes with order for {icl['mean']:.0%} of prompts and the head's "
                         f"kernel prediction for {head['mean']:.0%}: attention weights move with order, so the head is not order-invariant either")
            continue
        base = value(summary, task, baseline, "icl_accuracy")
        others = [s for s in summary[summary.task == task].setting.unique() if s not in (baseline, "any order")]
        diffs = []
        for setting in others:
            acc = value(summary, task, setting, "icl_accuracy")
            sign = "above" if acc["mean"] > base["mean"] else "below"
            sure = "CIs apart" if separated(acc, base) else "CIs overlap"
            text = f"{setting} {acc['mean']:.3f} ({sign}, {sure})"
            if kind in ("retrieval", "k"):
                ent, ent0 = value(summary, task, setting, "entropy"), value(summary, task, baseline, "entropy")
                text += f", entropy {ent['mean']:.3f} vs {ent0['mean']:.3f}"
            diffs.append(text)
        parts.append(f"{task}: ICL accuracy {base['mean']:.3f} with {baseline}; " + "; ".join(diffs))
    return ". ".join(parts) + "."


def setting_order(summary: pd.DataFrame, task: str, baseline: str, kind: str, settings: list[str]) -> list[str]:
    """Baseline first, then as configured; a k ablation runs in order of k."""
    if kind == "k":
        k = summary[(summary.task == task) & (summary.metric == "n_demos")].set_index("setting")["mean"]
        return sorted(settings, key=lambda s: k.get(s, np.inf))
    return sorted(settings, key=lambda s: s != baseline)


def figure(kind: str, summary: pd.DataFrame, baseline: str, title: str, out: Path, dpi: int) -> None:
    metrics = PANELS[kind]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        part = summary[summary.metric == metric]
        for n, (task, rows) in enumerate(part.groupby("task", sort=False)):
            rows = rows.set_index("setting").loc[setting_order(summary, task, baseline, kind, list(rows.setting))]
            x = np.arange(len(rows)) + 0.1 * n
            ax.errorbar(x, rows["mean"], yerr=[rows["mean"] - rows.ci_low, rows.ci_high - rows["mean"]],
                        fmt="o-" if kind in ("k", "typos") else "o", capsize=3, label=task)
            ax.set_xticks(np.arange(len(rows)), rows.index, rotation=40, ha="right", fontsize=8)
        ax.set_title(METRIC_TEXT.get(metric, metric.replace("_", " ")), fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{title} (95% CIs over held-out prompts)")
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def section(ablations: dict[str, dict], summaries: dict[str, pd.DataFrame], model: str, fig_dir: Path, dpi: int) -> list[str]:
    """Markdown lines for every ablation of one model; `ablations` is the config section."""
    lines = [
        f"## Section 4.2 ablations: {model}",
        "",
        "Each setting is run on the held-out prompts of Table 2 and read through the head the baseline chose on its",
        "select split (max kernel). Entropy is that head's normalized kernel entropy over the demonstrations (lower =",
        "narrower kernel); demo similarity is the mean encoder cosine of the demonstrations to the test input.",
        "",
    ]
    for name, cfg in ablations.items():
        summary = summaries[name]
        stem = f"{model}__ablation__{name}.png"
        figure(cfg["kind"], summary, cfg["baseline"], f"{model}: {name}", fig_dir / stem, dpi)
        shown = summary if cfg["kind"] == "k" else summary[summary.metric != "n_demos"]
        table = shown.pivot_table(index=["task", "setting"], columns="metric", values="mean", sort=False)
        header = list(table.columns)
        lines += [
            f"### {name} ({cfg['kind']})",
            "",
            f"Kernel view: {PREDICTION[cfg['kind']]} {NOTES[cfg['kind']]}",
            "",
            "| task | setting | " + " | ".join(METRIC_TEXT.get(m, m.replace("_", " ")) for m in header) + " |",
            "|---|---|" + "---|" * len(header),
            *[f"| {t} | {s} | " + " | ".join(number(m, v) for m, v in row.items()) + " |"
              for (t, s), row in table.iterrows()],
            "",
            f"**{conclusion(cfg['kind'], summary, cfg['baseline'])}** Measured: {verdict(cfg['kind'], summary, cfg['baseline'])}",
            "",
            f"![{name}]({fig_dir.name}/{stem})",
            "",
        ]
    return lines
