"""results/report.md: tables (mean +- sd over seeds) and the figures of Sections 5.1 and 5.2."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

from . import schemas  # noqa: E402
from .reconstruction import KERNELS  # noqa: E402

KERNEL_TEXT = {
    "max": "max attention over [x_i, y_i] (paper)",
    "label": "attention on the label token y_i",
    "mean": "mean attention over [x_i, y_i]",
}
PAPER_52 = "Paper (GPT-J-6B, sst2, max kernel): best head L17 H10, 89.2% agreement with the ICL prediction, 86.4% accuracy."


def mean_sd(values) -> str:
    values = np.asarray(values, dtype=float)
    sd = values.std(ddof=1) if len(values) > 1 else float("nan")
    return f"{values.mean():.3f} ± {sd:.3f}" if len(values) > 1 else f"{values.mean():.3f}"


def load_sets(sets: list[dict], heads: list[str], summaries: list[str], maps: list[str]) -> pd.DataFrame:
    """One row per prompt set with its tables loaded (heads and map as DataFrames)."""
    rows = []
    for key, h, s, m in zip(sets, heads, summaries, maps):
        rows.append(
            {
                **key,
                "heads": schemas.read_table(h, schemas.HEADS).to_pandas(),
                "summary": schemas.read_table(s, schemas.SUMMARY).to_pylist()[0],
                "map": schemas.read_table(m, schemas.ATTENTION_MAP).to_pandas(),
            }
        )
    return pd.DataFrame(rows)


def head_table(group: pd.DataFrame) -> pd.DataFrame:
    """Per kernel, the head with the best mean agreement over seeds, with its per-seed numbers."""
    heads = pd.concat([h.assign(seed=s) for h, s in zip(group["heads"], group["seed"])])
    mean = heads.groupby(["kernel", "layer", "head"])[["agreement", "accuracy"]].mean().reset_index()
    rows = []
    for kernel in KERNELS:
        best = mean[mean.kernel == kernel].sort_values(["agreement", "accuracy"], ascending=False).iloc[0]
        per_seed = heads[(heads.kernel == kernel) & (heads.layer == best.layer) & (heads["head"] == best["head"])]
        rows.append(
            {
                "kernel": kernel,
                "layer": int(best.layer),
                "head": int(best["head"]),
                "agreement": mean_sd(per_seed.agreement),
                "accuracy": mean_sd(per_seed.accuracy),
            }
        )
    return pd.DataFrame(rows)


def heatmaps(group: pd.DataFrame, kernel: str, title: str, out: Path, dpi: int) -> None:
    """Fig. 3: layer x head agreement with the ICL prediction and accuracy, mean over seeds."""
    heads = pd.concat(list(group["heads"]))
    heads = heads[heads.kernel == kernel].groupby(["layer", "head"])[["agreement", "accuracy"]].mean()
    fig, axes = plt.subplots(1, 2, figsize=(9, 6), sharey=True)
    for ax, metric in zip(axes, ["agreement", "accuracy"]):
        grid = heads[metric].unstack("head").to_numpy()
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
        ax.set_xlabel("head")
        ax.set_title({"agreement": "agreement with ICL prediction", "accuracy": "accuracy vs. gold"}[metric])
        fig.colorbar(im, ax=ax)
    axes[0].set_ylabel("layer")
    fig.suptitle(f"{title}: reconstruction per head ({kernel} kernel)")
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def attention_figure(group: pd.DataFrame, title: str, out: Path, dpi: int) -> None:
    """Fig. 2: last-token attention averaged over prompts (and seeds) on the aligned prompt axis."""
    maps = [m for m in group["map"] if len(m) == len(group["map"].iloc[0])]
    frame = pd.concat(maps).groupby(["layer", "head", "column"], sort=True)["attention"].mean()
    n_layers = frame.index.get_level_values("layer").max() + 1
    n_heads = frame.index.get_level_values("head").max() + 1
    grid = frame.to_numpy().reshape(n_layers * n_heads, -1)
    segment = maps[0][(maps[0].layer == 0) & (maps[0]["head"] == 0)].sort_values("column").segment.to_numpy()
    fig, ax = plt.subplots(figsize=(12, 7))
    im = ax.imshow(np.nan_to_num(grid), aspect="auto", origin="lower", cmap="magma", norm=PowerNorm(gamma=0.4))
    starts = [i for i in range(len(segment)) if i == 0 or segment[i] != segment[i - 1]]
    ticks = [i for i in starts if segment[i][0] in "yq"]
    ax.set_xticks(ticks, [segment[i] for i in ticks], rotation=90, fontsize=7)
    ax.set_yticks(np.arange(0, n_layers * n_heads, n_heads * max(1, n_layers // 10)),
                  [f"L{l}" for l in range(0, n_layers, max(1, n_layers // 10))])
    for i in ticks:
        ax.axvline(i - 0.5, color="white", lw=0.3, alpha=0.5)
    ax.set_xlabel("aligned prompt position (x_i and query resampled; y_i one column each)")
    ax.set_ylabel("layer (heads as rows within)")
    ax.set_title(f"{title}: last-token attention averaged over prompts")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def theory_section(summary: Path, figure: Path, out: Path) -> list[str]:
    """The synthetic Theorem 1 check, as its own rule wrote it, with its figure."""
    return [
        summary.read_text().strip(),
        "",
        f"![kernel regression vs. posterior]({figure.relative_to(out.parent)})",
        "",
    ]


def render_report(
    sets: pd.DataFrame, study: dict, options: dict, out: Path, fig_dir: Path, theory: list[str]
) -> str:
    fig_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# {options['title']}",
        "",
        f"Models: {', '.join(study['models'])}. Tasks: {', '.join(study['tasks'])}. "
        f"Seeds: {', '.join(map(str, study['seeds']))}. Settings: {', '.join(study['settings'])}. "
        f"Prompts per set: {study['n_eval']}, demonstrations per prompt: {study['k']}.",
        "",
        "Each attention head is read as a kernel regression over the demonstrations: demonstration i gets",
        "weight a_i from the last token's attention and the head predicts argmax_c sum_i a_i [y_i = c].",
        "Agreement is how often that reconstruction equals the model's own ICL prediction; the null",
        "baseline is the agreement of always answering the model's most frequent prediction.",
        "Numbers are mean ± sd over seeds; the best head is chosen by its mean agreement (in-sample).",
        "",
        PAPER_52,
        "",
    ]
    for (model, task, setting), group in sets.groupby(["model", "task", "setting"], sort=False):
        title = f"{model} / {task} / {setting}"
        stem = f"{model}__{task}__{setting}"
        summary = pd.DataFrame(list(group["summary"]))
        lines += [
            f"## {title}",
            "",
            f"ICL accuracy {mean_sd(summary.icl_accuracy)}; null baseline: agreement {mean_sd(summary.null_agreement)}, "
            f"accuracy {mean_sd(summary.null_accuracy)} ({int(summary.n_prompts.iloc[0])} prompts per seed, {len(group)} seeds).",
            "",
            "| kernel weight a_i | best head | agreement with ICL prediction | accuracy vs. gold | null agreement |",
            "|---|---|---|---|---|",
        ]
        for row in head_table(group).itertuples():
            lines.append(
                f"| {KERNEL_TEXT[row.kernel]} | L{row.layer} H{row.head} | {row.agreement} | {row.accuracy} "
                f"| {mean_sd(summary.null_agreement)} |"
            )
        attention_figure(group, title, fig_dir / f"{stem}__attention.png", options["dpi"])
        heatmaps(group, options["heatmap_kernel"], title, fig_dir / f"{stem}__heads.png", options["dpi"])
        rel = fig_dir.relative_to(out.parent)
        lines += [
            "",
            f"![averaged attention]({rel}/{stem}__attention.png)",
            "",
            f"![per-head reconstruction]({rel}/{stem}__heads.png)",
            "",
        ]
    text = "\n".join(lines + theory) + "\n"
    out.write_text(text)
    return text


def from_snakemake(smk) -> None:
    sets = load_sets(smk.params.sets, smk.input.heads, smk.input.summaries, smk.input.maps)
    out = Path(smk.output.report)
    theory = theory_section(Path(smk.input.theory), Path(smk.input.theory_figure), out)
    render_report(sets, smk.params.study, smk.params.options, out, Path(smk.output.figures), theory)
