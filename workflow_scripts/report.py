"""results/report.md: tables (mean +- sd over seeds) and the figures of Sections 5.1 and 5.2."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

from . import ablation_report, schemas, stats, table2  # noqa: E402
from .reconstruction import KERNELS  # noqa: E402

KERNEL_TEXT = {
    "max": "max attention over [x_i, y_i] (paper)",
    "label": "attention on the label token y_i",
    "mean": "mean attention over [x_i, y_i]",
}
PAPER_52 = "Paper (GPT-J-6B, sst2, max kernel): best head L17 H10, 89.2% agreement with the ICL prediction, 86.4% accuracy."


def table_cell(text: str) -> str:
    """Text safe inside a markdown table cell (a bare | would split the cell)."""
    return text.replace("|", "\\|")


def mean_sd(values) -> str:
    values = np.asarray(values, dtype=float)
    sd = values.std(ddof=1) if len(values) > 1 else float("nan")
    return f"{values.mean():.3f} ± {sd:.3f}" if len(values) > 1 else f"{values.mean():.3f}"


# Per-set tables the report reads: input name -> (schema, how it is kept).
SET_TABLES = {
    "heads": schemas.HEADS,
    "summaries": schemas.SUMMARY,
    "maps": schemas.ATTENTION_MAP,
    "label_mass": schemas.LABEL_MASS,
    "similarity": schemas.SIMILARITY,
    "probes": schemas.PROBES,
}


def load_sets(sets: list[dict], files: dict[str, list[str]]) -> pd.DataFrame:
    """One row per prompt set with each of its tables as a DataFrame (None where not computed)."""
    rows = []
    for i, key in enumerate(sets):
        row = dict(key)
        for name, schema in SET_TABLES.items():
            paths = files.get(name)
            row[name] = schemas.read_table(paths[i], schema).to_pandas() if paths else None
        row["summary"] = row.pop("summaries").iloc[0].to_dict()
        row["heads"], row["map"] = row["heads"], row.pop("maps")
        rows.append(row)
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


def head_grid(heads: pd.DataFrame, kernel: str, metric: str) -> np.ndarray:
    """(layers, heads) grid of one metric of one kernel variant."""
    return heads[heads.kernel == kernel].groupby(["layer", "head"])[metric].mean().unstack("head").to_numpy()


def heatmaps(group: pd.DataFrame, title: str, out: Path, dpi: int) -> None:
    """Fig. 3: layer x head agreement with the ICL prediction and accuracy, every kernel, mean over seeds."""
    heads = pd.concat(list(group["heads"]))
    fig, axes = plt.subplots(2, len(KERNELS), figsize=(4 * len(KERNELS), 8), sharey=True, constrained_layout=True)
    for col, kernel in enumerate(KERNELS):
        for row, metric in enumerate(["agreement", "accuracy"]):
            ax = axes[row, col]
            im = ax.imshow(head_grid(heads, kernel, metric), aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"{kernel}: {'agreement with ICL' if metric == 'agreement' else 'accuracy vs. gold'}", fontsize=9)
            ax.set_xlabel("head")
        fig.colorbar(im, ax=axes[:, col].tolist(), shrink=0.6)
    for row in axes:
        row[0].set_ylabel("layer")
    fig.suptitle(f"{title}: each head read as a kernel regression")
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def top_head_depth(heads: pd.DataFrame, kernel: str, fraction: float) -> tuple[int, float, float, float]:
    """Where the top `fraction` of heads by agreement sit: (count, mean, min, max) of layer / (layers - 1)."""
    grid = head_grid(heads, kernel, "agreement")
    n = max(1, int(round(fraction * grid.size)))
    layers = np.unravel_index(np.argsort(grid, axis=None)[::-1][:n], grid.shape)[0]
    depth = layers / max(1, grid.shape[0] - 1)
    return n, float(depth.mean()), float(depth.min()), float(depth.max())


def similarity_section(group: pd.DataFrame, title: str, out: Path, dpi: int) -> list[str]:
    """Fig. 4: per head, Pearson(kernel weight, prediction similarity), and how it tracks Fig. 3."""
    sim = pd.concat(list(group["similarity"]))
    heads = pd.concat(list(group["heads"]))
    fig, axes = plt.subplots(1, len(KERNELS), figsize=(4 * len(KERNELS), 4.5), sharey=True)
    rows = ["| kernel | best head: Pearson | heads with Pearson > 0 | corr. with the agreement heatmap (Fig. 3) |", "|---|---|---|---|"]
    for ax, kernel in zip(axes, KERNELS):
        grid = head_grid(sim.rename(columns={"pearson": "value"}), kernel, "value")
        limit = np.nanmax(np.abs(grid)) or 1.0
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"{kernel} kernel", fontsize=9)
        ax.set_xlabel("head")
        fig.colorbar(im, ax=ax)
        agree = head_grid(heads, kernel, "agreement")
        layer, head = np.unravel_index(np.nanargmax(grid), grid.shape)
        rows.append(
            f"| {kernel} | L{layer} H{head}: {grid[layer, head]:.3f} | {np.mean(grid > 0):.0%} "
            f"| {stats.pearson(grid.ravel(), agree.ravel()):.3f} |"
        )
    axes[0].set_ylabel("layer")
    fig.suptitle(f"{title}: Pearson(a_i, P(o|x_test)·P(o|x_i)) per head")
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    n_pairs = int(sim.n_pairs.iloc[0])
    return [
        "**5.3 Which demonstrations get attention.** Per head, the Pearson correlation between its kernel weight a_i and",
        f"the prediction similarity P(o|x_test)·P(o|x_i) (zero-shot label distributions), over {n_pairs} (prompt, demo) pairs per seed;",
        "the last column correlates this heatmap with the agreement heatmap of Section 5.2 across all heads (the paper: the two look alike).",
        "",
        *rows,
        "",
        f"![prediction similarity]({out.parent.name}/{out.name})",
        "",
    ]


def probes_section(group: pd.DataFrame, title: str, out: Path, dpi: int) -> list[str]:
    """Fig. 5: probe accuracy by layer and offset from each demonstration's peak, keys and values."""
    probes = pd.concat(list(group["probes"])).groupby(["vector", "offset", "layer", "head"])[["accuracy", "majority"]].mean()
    probes = probes.reset_index()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    target = {"key": "key -> argmax P(o|x_i) (zero-shot)", "value": "value -> y_i (label)"}
    rows = ["| vector -> target | chance (majority) | best offset (mean over heads) | best head: layer, head, offset, accuracy |",
            "|---|---|---|---|"]
    for ax, vector in zip(axes, ["key", "value"]):
        part = probes[probes.vector == vector]
        by_offset = part.groupby(["offset", "layer"]).accuracy.mean()
        for offset in sorted(part.offset.unique()):
            line = by_offset.loc[offset]
            ax.plot(line.index, line.to_numpy(), marker="o", ms=3, lw=2.5 if offset == 0 else 1, label=f"offset {offset:+d}")
        majority = float(part.majority.mean())
        ax.axhline(majority, color="grey", ls="--", lw=1, label="majority")
        ax.set_title(target[vector], fontsize=10)
        ax.set_xlabel("layer")
        best_offset = part.groupby("offset").accuracy.mean().idxmax()
        best = part.loc[part.accuracy.idxmax()]
        rows.append(
            f"| {table_cell(target[vector])} | {majority:.3f} | {best_offset:+d} ({part[part.offset == best_offset].accuracy.mean():.3f}) "
            f"| L{int(best.layer)} H{int(best['head'])} offset {int(best.offset):+d}: {best.accuracy:.3f} |"
        )
    axes[0].set_ylabel("held-out probe accuracy (mean over heads)")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{title}: ridge probes on keys and values around each demonstration's peak")
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return [
        "**5.4 Where the kernel's features live.** Ridge probes (cross-validated, folds grouped by demonstration example)",
        "on each head's key and value vectors at offsets -1..+3 from the demonstration's highest-attention position.",
        "The paper expects the peak at offset 0.",
        "",
        *rows,
        "",
        f"![probes]({out.parent.name}/{out.name})",
        "",
    ]


def label_mass_lines(group: pd.DataFrame) -> list[str]:
    """Section 5.1's number: how much more than uniform the last token attends to the label tokens."""
    mass = pd.concat(list(group["label_mass"])).groupby("layer")[["label_mass", "label_share", "ratio"]].mean()
    top = mass.ratio.idxmax()
    above = int((mass.ratio > 1).sum())
    cells = " ".join(f"{r:.1f}" for r in mass.ratio)
    return [
        f"**5.1 Label tokens.** They are {mass.label_share.iloc[0]:.1%} of prompt positions. Their share of the last token's",
        f"attention, divided by that, per layer (1 = uniform): {cells}. Above uniform in {above} of {len(mass)} layers;",
        f"the peak is layer {top}, with {mass.label_mass.loc[top]:.1%} of the attention ({mass.ratio.loc[top]:.1f}x uniform).",
        "",
    ]


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


METHOD_TEXT = {
    "head_max": "best head, max kernel (paper)",
    "head_label": "best head, label-token kernel",
    "head_mean": "best head, span-mean kernel",
    "kr_encoder": "kernel regression on {encoder}",
    "kr_hidden": "kernel regression on the model's hidden states",
}
PAPER_ROWS = {  # our (method, metric) -> the paper's Table 2 row
    ("icl", "accuracy"): "icl accuracy",
    ("head_max", "agreement"): "reconstruction agreement",
    ("head_max", "accuracy"): "reconstructed accuracy",
    ("kr_encoder", "accuracy"): "KR on all-MiniLM-L6-v2",
}


def paper_table() -> list[str]:
    tasks = list(table2.PAPER["icl accuracy"])
    return [
        "The paper's Table 2 (GPT-J-6B, 400 select / 300 held-out examples):",
        "",
        "| GPT-J-6B | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
        *[f"| {row} | " + " | ".join(f"{v:.3f}" for v in values.values()) + " |" for row, values in table2.PAPER.items()],
        "",
    ]


def table2_lines(table: pd.DataFrame, task: str, encoder: str) -> list[str]:
    """Our Table 2 for one model x task x setting, with the paper's number for the same task beside it."""
    def cell(method: str, metric: str) -> str:
        row = table[(table.method == method) & (table.metric == metric)]
        if row.empty:
            return "—"
        r = row.iloc[0]
        sd = "" if np.isnan(r["sd"]) else f" ± {r['sd']:.3f}"
        return f"{r['mean']:.3f}{sd} [{r.ci_low:.3f}, {r.ci_high:.3f}]"

    def paper(method: str, metric: str) -> str:
        row = PAPER_ROWS.get((method, metric))
        return f"{table2.PAPER[row][task]:.3f}" if row and task in table2.PAPER[row] else "—"

    first = table.iloc[0]
    lines = [
        f"Held out: {int(first.n_heldout)} test prompts per seed, {int(first.n_seeds)} seeds; "
        "mean ± sd over seeds [bootstrap 95% CI over held-out examples].",
        "",
        f"| | agreement with ICL prediction | accuracy vs. gold | chosen on the select split | paper, agreement / accuracy ({task}) |",
        "|---|---|---|---|---|",
        f"| ICL (the model's own prediction) | — | {cell('icl', 'accuracy')} | | — / {paper('icl', 'accuracy')} |",
        f"| null: always the select split's most frequent ICL prediction | {cell('null', 'agreement')} | {cell('null', 'accuracy')} | | |",
    ]
    for method, text in METHOD_TEXT.items():
        choices = table[table.method == method].choices
        lines.append(
            f"| {text.format(encoder=encoder)} | {cell(method, 'agreement')} | {cell(method, 'accuracy')} "
            f"| {choices.iloc[0] if len(choices) else ''} | {paper(method, 'agreement')} / {paper(method, 'accuracy')} |"
        )
    return lines + [""]


def theory_section(summary: Path, figure: Path, out: Path) -> list[str]:
    """The synthetic Theorem 1 check, as its own rule wrote it, with its figure."""
    return [
        summary.read_text().strip(),
        "",
        f"![kernel regression vs. posterior]({figure.relative_to(out.parent)})",
        "",
    ]


def render_report(
    sets: pd.DataFrame, tables: dict[tuple[str, str, str], pd.DataFrame], study: dict, options: dict, out: Path,
    fig_dir: Path, theory: list[str], ablations: list[str] = (),
) -> str:
    """results/report.md: Table 2 first (the paper's headline), then Sections 5.1-5.4 per prompt set,
    the Section 4.2 ablations and the theorem check."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    rel = fig_dir.relative_to(out.parent)
    lines = [
        f"# {options['title']}",
        "",
        f"Models: {', '.join(study['models'])}. Tasks: {', '.join(study['tasks'])}. "
        f"Seeds: {', '.join(map(str, study['seeds']))}. Settings: {', '.join(study['settings'])}. "
        f"Prompts per set: {study['n_eval']} ({study['n_select']} to select heads, {study['n_heldout']} held out), "
        f"demonstrations per prompt: {study['k']}.",
        "",
        "Each attention head is read as a kernel regression over the demonstrations: demonstration i gets",
        "weight a_i from the last token's attention and the head predicts argmax_c sum_i a_i [y_i = c].",
        "Agreement is how often that reconstruction equals the model's own ICL prediction; the null",
        "baseline is the agreement of always answering the model's most frequent prediction.",
        "",
        "## Table 2 (Section 5.5): one head, chosen on the select split, on held-out prompts",
        "",
        *paper_table(),
    ]
    for (model, task, setting), table in tables.items():
        lines += [f"### {model} / {task} / {setting}", "", *table2_lines(table, task, study["encoder"])]
    for (model, task, setting), group in sets.groupby(["model", "task", "setting"], sort=False):
        title = f"{model} / {task} / {setting}"
        stem = f"{model}__{task}__{setting}"
        summary = pd.DataFrame(list(group["summary"]))
        heads = pd.concat(list(group["heads"]))
        lines += [
            f"## {title}",
            "",
            f"All {int(summary.n_prompts.iloc[0])} prompts per seed, {len(group)} seeds: ICL accuracy {mean_sd(summary.icl_accuracy)}; "
            f"null baseline: agreement {mean_sd(summary.null_agreement)}, accuracy {mean_sd(summary.null_accuracy)}.",
            "",
            *label_mass_lines(group),
            f"![averaged attention]({rel}/{stem}__attention.png)",
            "",
            "**5.2 Heads as kernels** (best head chosen on all prompts, in-sample; Table 2 above holds it out).",
            PAPER_52,
            "",
            "| kernel weight a_i | best head | agreement with ICL prediction | accuracy vs. gold | "
            f"top {options['top_head_fraction']:.0%} heads by agreement: depth (layer / last layer) |",
            "|---|---|---|---|---|",
        ]
        for row in head_table(group).itertuples():
            n, mean, low, high = top_head_depth(heads, row.kernel, options["top_head_fraction"])
            lines.append(
                f"| {KERNEL_TEXT[row.kernel]} | L{row.layer} H{row.head} | {row.agreement} | {row.accuracy} "
                f"| {n} heads, mean {mean:.2f} (range {low:.2f}-{high:.2f}) |"
            )
        attention_figure(group, title, fig_dir / f"{stem}__attention.png", options["dpi"])
        heatmaps(group, title, fig_dir / f"{stem}__heads.png", options["dpi"])
        lines += ["", f"![per-head reconstruction]({rel}/{stem}__heads.png)", ""]
        lines += similarity_section(group, title, fig_dir / f"{stem}__similarity.png", options["dpi"])
        if group["probes"].notna().all():
            lines += probes_section(group, title, fig_dir / f"{stem}__probes.png", options["dpi"])
        else:
            lines += ["**5.4** Probes are off: set extraction.kv_layers to keep key and value vectors.", ""]
    text = "\n".join(lines + list(ablations) + theory) + "\n"
    out.write_text(text)
    return text


def load_tables2(keys: list[list[str]], files: list[str]) -> dict[tuple[str, str, str], pd.DataFrame]:
    return {tuple(key): schemas.read_table(f, schemas.TABLE2).to_pandas() for key, f in zip(keys, files)}


def from_snakemake(smk) -> None:
    files = {name: list(smk.input[name]) for name in SET_TABLES if name in smk.input.keys()}
    sets = load_sets(smk.params.sets, files)
    tables2 = load_tables2(smk.params.table2_keys, list(smk.input.table2))
    out = Path(smk.output.report)
    theory = theory_section(Path(smk.input.theory), Path(smk.input.theory_figure), out)
    options = {**smk.params.options, "top_head_fraction": smk.params.top_head_fraction}
    fig_dir = Path(smk.output.figures)
    fig_dir.mkdir(parents=True, exist_ok=True)
    ablations = []
    summaries = iter(smk.input.ablations)
    for model in smk.params.study["models"]:
        tables = {name: schemas.read_table(next(summaries), schemas.ABLATION_SUMMARY).to_pandas() for name in smk.params.ablations}
        if tables:
            ablations += ablation_report.section(smk.params.ablations, tables, model, fig_dir, options["dpi"])
    render_report(sets, tables2, smk.params.study, options, out, fig_dir, theory, ablations)
