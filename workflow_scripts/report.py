"""The report of Sections 5.1-5.5 and Theorem 1: per model x task x setting (mean over seeds) one rule
per figure, each writing its figure, its table (CSV and sortable HTML, for the Snakemake HTML report)
and its piece of results/report.md; then the `report` rule assembles results/report.md from the pieces.
ablation_report.py does the same for the Section 4.2 ablations."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from . import ablation_report, interventions_report, paths, run_warnings, schemas, stats  # noqa: E402
from .kernels import ATTENTION_KERNELS  # noqa: E402
from .report_files import Outputs, link, outputs_of, read_piece, write_piece, write_table  # noqa: E402
from . import table2  # noqa: E402
from .table2_report import paper_table, table2_verdicts  # noqa: E402

KERNEL_TEXT = {
    "max": "max attention over [x_i, y_i] (paper)",
    "label": "attention on the label token y_i",
    "mean": "mean attention over [x_i, y_i]",
    "max_nosink": "max attention over [x_i, y_i] without position 0 (the attention sink)",
}
PAPER_52 = "Paper (GPT-J-6B, sst2, max kernel): best head L17 H10, 89.2% agreement with the ICL prediction, 86.4% accuracy."
PROBES_OFF = "**5.4** Probes are off: set extraction.kv_layers to keep key and value vectors."


def set_title(model: str, task: str, setting: str) -> str:
    return f"{model} / {task} / {setting}"


def table_cell(text: str) -> str:
    """Text safe inside a markdown table cell (a bare | would split the cell)."""
    return text.replace("|", "\\|")


def mean_sd(values) -> str:
    values = np.asarray(values, dtype=float)
    sd = values.std(ddof=1) if len(values) > 1 else float("nan")
    return f"{values.mean():.3f} ± {sd:.3f}" if len(values) > 1 else f"{values.mean():.3f}"


def read_all(files: list[str], schema) -> list[pd.DataFrame]:
    """One table per seed."""
    return [schemas.read_table(f, schema).to_pandas() for f in files]


# Section 5.1 -------------------------------------------------------------------------------------


def label_mass_table(masses: list[pd.DataFrame]) -> pd.DataFrame:
    """Per layer, mean over seeds: the label tokens' share of the last token's attention, their share
    of prompt positions, and the ratio of the two (1 = uniform)."""
    return pd.concat(masses).groupby("layer")[["label_mass", "label_share", "ratio"]].mean().reset_index()


def label_mass_lines(table: pd.DataFrame) -> list[str]:
    """Section 5.1's number: how much more than uniform the last token attends to the label tokens."""
    mass = table.set_index("layer")
    top = mass.ratio.idxmax()
    above = int((mass.ratio > 1).sum())
    cells = " ".join(f"{r:.1f}" for r in mass.ratio)
    return [
        f"**5.1 Label tokens.** They are {mass.label_share.iloc[0]:.1%} of prompt positions. Their share of the last token's",
        f"attention, divided by that, per layer (1 = uniform): {cells}. Above uniform in {above} of {len(mass)} layers;",
        f"the peak is layer {top}, with {mass.label_mass.loc[top]:.1%} of the attention ({mass.ratio.loc[top]:.1f}x uniform).",
        "",
    ]


def attention_figure(maps: list[pd.DataFrame], title: str, out: str | Path, dpi: int) -> None:
    """Fig. 2: last-token attention averaged over prompts (and seeds) on the aligned prompt axis."""
    maps = [m for m in maps if len(m) == len(maps[0])]
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


def render_attention(maps: list[pd.DataFrame], masses: list[pd.DataFrame], title: str, out: Outputs, dpi: int) -> None:
    attention_figure(maps, title, out.figure, dpi)
    table = label_mass_table(masses)
    write_table(table, out, f"{title}: attention on the label tokens per layer")
    write_piece(out.piece, [*label_mass_lines(table), f"![averaged attention]({link(out.figure)})", ""])


# Section 5.2 -------------------------------------------------------------------------------------


def head_table(heads: pd.DataFrame) -> pd.DataFrame:
    """Per kernel, the head with the best mean agreement over seeds, with its per-seed numbers."""
    mean = heads.groupby(["kernel", "layer", "head"])[["agreement", "accuracy"]].mean().reset_index()
    rows = []
    for kernel in ATTENTION_KERNELS:
        best = mean[mean.kernel == kernel].sort_values(["agreement", "accuracy"], ascending=False).iloc[0]
        per_seed = heads[(heads.kernel == kernel) & (heads.layer == best.layer) & (heads["head"] == best["head"])]
        rows.append(
            {
                "kernel": kernel,
                "layer": int(best.layer),
                "head": int(best["head"]),
                "agreement": mean_sd(per_seed.agreement),
                "accuracy": mean_sd(per_seed.accuracy),
                **{column: float(per_seed[column].mean()) for column in QUERY_COLUMNS},
            }
        )
    return pd.DataFrame(rows)


def head_grid(heads: pd.DataFrame, kernel: str, metric: str) -> np.ndarray:
    """(layers, heads) grid of one metric of one kernel variant."""
    return heads[heads.kernel == kernel].groupby(["layer", "head"])[metric].mean().unstack("head").to_numpy()


def top_head_count(heads: pd.DataFrame, kernel: str, fraction: float) -> int:
    return max(1, int(round(fraction * head_grid(heads, kernel, "agreement").size)))


def top_head_depth(heads: pd.DataFrame, kernel: str, fraction: float) -> tuple[int, float, float, float]:
    """Where the top `fraction` of heads by agreement sit: (count, mean, min, max) of layer / (layers - 1)."""
    grid = head_grid(heads, kernel, "agreement")
    n = top_head_count(heads, kernel, fraction)
    layers = np.unravel_index(np.argsort(grid, axis=None)[::-1][:n], grid.shape)[0]
    depth = layers / max(1, grid.shape[0] - 1)
    return n, float(depth.mean()), float(depth.min()), float(depth.max())


def top_heads(heads: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """Per kernel, the top `fraction` of heads by mean agreement over seeds (ties: better accuracy,
    then lower layer and head), with mean and sd over seeds and their depth (layer / last layer)."""
    heads = heads.reindex(columns=list(dict.fromkeys([*heads.columns, *QUERY_COLUMNS])))
    scores = heads.groupby(["kernel", "layer", "head"])[["agreement", "accuracy"]].agg(["mean", "std"])
    scores.columns = ["agreement", "agreement_sd", "accuracy", "accuracy_sd"]
    scores = scores.join(heads.groupby(["kernel", "layer", "head"])[QUERY_COLUMNS].mean()).reset_index()
    last_layer = max(1, int(heads.layer.max()))
    tables = []
    for kernel in ATTENTION_KERNELS:
        part = scores[scores.kernel == kernel].sort_values(["agreement", "accuracy"], ascending=False, kind="stable")
        part = part.head(top_head_count(heads, kernel, fraction))
        tables.append(part.assign(rank=np.arange(1, len(part) + 1), depth=part.layer / last_layer))
    columns = ["kernel", "rank", "layer", "head", "depth", "agreement", "agreement_sd", "accuracy", "accuracy_sd", *QUERY_COLUMNS]
    return pd.concat(tables)[columns].reset_index(drop=True)


# Per-head query dependence (query_dependence.py) shown beside agreement: R^2 of the weights on slot and
# slot x label word, and with a query-swap setting how far the weights move and how often the vote does.
QUERY_COLUMNS = ["r2_slot", "r2_slot_label", "weight_shift", "vote_change"]


def with_query_swap(heads: pd.DataFrame, swap: pd.DataFrame | None) -> pd.DataFrame:
    """Heads (every seed, a `seed` column) with the query-swap columns (nan without a swap setting)."""
    if swap is None or swap.empty:
        return heads.assign(weight_shift=np.nan, vote_change=np.nan, icl_change=np.nan)
    keys = ["seed", "kernel", "layer", "head"]
    return heads.merge(swap[[*keys, "weight_shift", "vote_change", "icl_change"]], on=keys, how="left")


def layer_head_axes(ax) -> None:
    """Ticks at whole layers and heads only (small models would get 0.25 steps)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


HEATMAP_TEXT = {
    "agreement": "agreement with ICL",
    "accuracy": "accuracy vs. gold",
    "r2_slot_label": "R² of weights on slot x label (1 = query-free)",
    "weight_shift": "weight shift when only the query changes",
}


def heatmaps(heads: pd.DataFrame, title: str, out: str | Path, dpi: int) -> None:
    """Fig. 3: layer x head agreement with the ICL prediction and accuracy, every kernel, mean over seeds;
    beside it the query dependence of each head (R^2 on slot x label, the query-swap weight shift)."""
    metrics = [m for m in HEATMAP_TEXT if heads[m].notna().any()]
    fig, axes = plt.subplots(len(metrics), len(ATTENTION_KERNELS), figsize=(4 * len(ATTENTION_KERNELS), 4 * len(metrics)),
                             sharey=True, constrained_layout=True, squeeze=False)
    for col, kernel in enumerate(ATTENTION_KERNELS):
        for row, metric in enumerate(metrics):
            ax = axes[row, col]
            im = ax.imshow(head_grid(heads, kernel, metric), aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"{kernel}: {HEATMAP_TEXT[metric]}", fontsize=9)
            ax.set_xlabel("head")
            layer_head_axes(ax)
            if col == len(ATTENTION_KERNELS) - 1:
                fig.colorbar(im, ax=axes[row, :].tolist(), shrink=0.8)
    for row in axes:
        row[0].set_ylabel("layer")
    fig.suptitle(f"{title}: each head read as a kernel regression")
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def sink_lines(heads: pd.DataFrame, best_heads: pd.DataFrame) -> list[str]:
    """How much of the last token's attention sits on position 0, which without a BOS token is inside
    the first demonstration's span and inflates its max-kernel weight (`best_heads`: head_table's)."""
    sink = heads.groupby(["layer", "head"]).sink_attention.mean()
    (layer, head), top = sink.idxmax(), sink.max()
    best = best_heads.set_index("kernel").loc["max"]
    return [
        f"Position 0 (the attention sink when the prompt has no BOS token) holds {sink.mean():.2f} of the last token's "
        f"attention on average over heads, {top:.2f} in L{layer} H{head}; the best max-kernel head L{best.layer} H{best['head']} "
        f"puts {sink[(best.layer, best['head'])]:.2f} there. The sink-free row reads the same max kernel without position 0.",
        "",
    ]


def heads_lines(heads: pd.DataFrame, fraction: float, figure: str) -> list[str]:
    lines = [
        "**5.2 Heads as kernels** (best head chosen on all prompts, in-sample; Table 2 above holds it out).",
        PAPER_52,
        "",
        "| kernel weight a_i | best head | agreement with ICL prediction | accuracy vs. gold | "
        f"top {fraction:.0%} heads by agreement: depth (layer / last layer) | R² slot / slot x label | query swap: weight shift / vote change |",
        "|---|---|---|---|---|---|---|",
    ]
    best_heads = head_table(heads)
    for row in best_heads.itertuples():
        n, mean, low, high = top_head_depth(heads, row.kernel, fraction)
        swap = "—" if np.isnan(row.weight_shift) else f"{row.weight_shift:.2f} / {row.vote_change:.0%}"
        lines.append(
            f"| {KERNEL_TEXT[row.kernel]} | L{row.layer} H{row.head} | {row.agreement} | {row.accuracy} "
            f"| {n} heads, mean {mean:.2f} (range {low:.2f}-{high:.2f}) | {row.r2_slot:.2f} / {row.r2_slot_label:.2f} | {swap} |"
        )
    return lines + ["", *query_lines(heads, best_heads), *sink_lines(heads, best_heads), f"![per-head reconstruction]({figure})", ""]


def query_lines(heads: pd.DataFrame, best_heads: pd.DataFrame) -> list[str]:
    """How query-dependent the best heads are, against every head: a kernel's weights must move with
    the query, a positional or label-word head's are a fixed profile (R^2 near 1, no shift)."""
    mean = heads.groupby(["kernel", "layer", "head"])[QUERY_COLUMNS].mean()
    best = best_heads.set_index("kernel").loc["max"]
    lines = [
        f"Query dependence: slot and slot x label word explain {best.r2_slot:.0%} and {best.r2_slot_label:.0%} of the "
        f"variance of the best max-kernel head's normalized weights (median over heads {mean.r2_slot.median():.0%} and "
        f"{mean.r2_slot_label.median():.0%}); the rest varies with the query and the demonstrations' inputs."
    ]
    if not np.isnan(best.weight_shift):
        icl = heads.icl_change.dropna().mean() if "icl_change" in heads else float("nan")
        lines.append(
            f"With the same demonstrations and another held-out query, its weights move by {best.weight_shift:.2f} "
            f"(total variation; 0 = the query does not matter, median over heads {mean.weight_shift.median():.2f}) and its vote "
            f"changes on {best.vote_change:.0%} of prompts, the ICL prediction on {icl:.0%}."
        )
    return [" ".join(lines), ""]


def render_heads(heads: pd.DataFrame, title: str, fraction: float, out: Outputs, dpi: int, swap: pd.DataFrame | None = None) -> None:
    heads = with_query_swap(heads, swap)
    heatmaps(heads, title, out.figure, dpi)
    write_table(top_heads(heads, fraction), out, f"{title}: the top {fraction:.0%} heads by agreement",
                       [f"Kernel weights: {'; '.join(f'{k} = {text}' for k, text in KERNEL_TEXT.items())}.", PAPER_52])
    write_piece(out.piece, heads_lines(heads, fraction, link(out.figure)))


# Section 5.3 -------------------------------------------------------------------------------------


SIMILARITY_TEXT = {
    "label_words": "label words: P(o|x) over the label words (the paper's experiments)",
    "next_token": "next token: P(o|x) over the whole vocabulary (the theory's), from each example's top k",
}


def similarity_table(sim: pd.DataFrame, heads: pd.DataFrame) -> pd.DataFrame:
    """Per similarity and kernel: the head whose weights correlate best with the prediction similarity,
    the share of heads with a positive correlation, and how the correlation heatmap tracks the
    agreement heatmap."""
    rows = []
    for similarity in SIMILARITY_TEXT:
        part = sim[sim.similarity == similarity]
        for kernel in ATTENTION_KERNELS:
            grid = head_grid(part, kernel, "pearson")
            layer, head = np.unravel_index(np.nanargmax(grid), grid.shape)
            rows.append({
                "similarity": similarity, "kernel": kernel, "layer": int(layer), "head": int(head),
                "pearson": float(grid[layer, head]), "share_positive": float(np.mean(grid > 0)),
                "corr_with_agreement": stats.pearson(grid.ravel(), head_grid(heads, kernel, "agreement").ravel()),
            })
    return pd.DataFrame(rows)


def similarity_figure(sim: pd.DataFrame, title: str, out: str | Path, dpi: int) -> None:
    """Fig. 4: per head, Pearson(kernel weight, prediction similarity), one row per reading of P(o|x)."""
    fig, axes = plt.subplots(len(SIMILARITY_TEXT), len(ATTENTION_KERNELS), figsize=(4 * len(ATTENTION_KERNELS), 8.5),
                             sharey=True, squeeze=False)
    for row, similarity in zip(axes, SIMILARITY_TEXT):
        part = sim[sim.similarity == similarity]
        for ax, kernel in zip(row, ATTENTION_KERNELS):
            grid = head_grid(part, kernel, "pearson")
            limit = np.nanmax(np.abs(grid)) or 1.0
            im = ax.imshow(grid, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(f"{kernel} kernel, {similarity.replace('_', ' ')}", fontsize=9)
            ax.set_xlabel("head")
            layer_head_axes(ax)
            fig.colorbar(im, ax=ax)
        row[0].set_ylabel("layer")
    fig.suptitle(f"{title}: Pearson(a_i, P(o|x_test)·P(o|x_i)) per head")
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def similarity_lines(table: pd.DataFrame, n_pairs: int, bound: float, figure: str) -> list[str]:
    by = table.set_index(["similarity", "kernel"]).corr_with_agreement
    closer, other = sorted(SIMILARITY_TEXT, key=lambda s: by.loc[s, "max"], reverse=True)
    values = f"{closer.replace('_', ' ')} {by.loc[closer, 'max']:.3f}, {other.replace('_', ' ')} {by.loc[other, 'max']:.3f}"
    if by.loc[closer, "max"] <= 0:
        verdict = f"With the max kernel neither reading tracks Fig. 3 ({values}): the paper's resemblance does not reproduce here."
    else:
        verdict = f"With the max kernel the {closer.replace('_', ' ')} reading tracks Fig. 3 more closely ({values})."
    return [
        "**5.3 Which demonstrations get attention.** Per head, the Pearson correlation between its kernel weight a_i and",
        f"the prediction similarity P(o|x_test)·P(o|x_i), over {n_pairs} (prompt, demo) pairs per seed, with P(o|x) the",
        f"zero-shot distribution read two ways: {SIMILARITY_TEXT['label_words']}; {SIMILARITY_TEXT['next_token']}",
        f"(every next-token similarity is within {bound:.3g} of the full-vocabulary one). The last column correlates the",
        "heatmap with the agreement heatmap of Section 5.2 across all heads (the paper: the two look alike).",
        "",
        "| P(o\\|x) over | kernel | best head: Pearson | heads with Pearson > 0 | corr. with the agreement heatmap (Fig. 3) |",
        "|---|---|---|---|---|",
        *[f"| {r.similarity.replace('_', ' ')} | {r.kernel} | L{r.layer} H{r.head}: {r.pearson:.3f} | {r.share_positive:.0%} | "
          f"{r.corr_with_agreement:.3f} |" for r in table.itertuples()],
        "",
        verdict,
        "",
        f"![prediction similarity]({figure})",
        "",
    ]


def render_similarity(sim: pd.DataFrame, heads: pd.DataFrame, title: str, out: Outputs, dpi: int) -> None:
    similarity_figure(sim, title, out.figure, dpi)
    table = similarity_table(sim, heads)
    write_table(table, out, f"{title}: kernel weights vs. prediction similarity (label words and next token)")
    bound = float(sim.truncation_bound.max())
    write_piece(out.piece, similarity_lines(table, int(sim.n_pairs.iloc[0]), bound, link(out.figure)))


# Section 5.4 -------------------------------------------------------------------------------------

PROBE_TARGET = {"key": "key -> argmax P(o|x_i) (zero-shot)", "value": "value -> y_i (label)"}


# Balanced accuracies are ratios of counts below a few thousand; differences under this are rounding.
_PROBE_TIE = 1e-9
PROBE_SCORES = ["accuracy", "majority", "balanced_accuracy", "shuffled_balanced_accuracy", "token_balanced_accuracy",
                "chance", "n_samples"]
PROBE_READS = {"key": "a key that carries x_i's zero-shot answer", "value": "a value that carries e(y_i)"}


def token_margin(n_samples: float) -> float:
    """The clear margin a probe must beat its token-identity control by: two standard errors of a
    balanced accuracy at its widest (recall 1/2), 2 * 0.5 / sqrt(n) over the n demonstrations scored."""
    return float(1.0 / np.sqrt(n_samples))


def mean_probes(probes: pd.DataFrame) -> pd.DataFrame:
    """Probe scores per vector kind, offset, layer and head, mean over seeds."""
    columns = ["vector", "offset", "layer", "head"]
    return probes.groupby(columns)[PROBE_SCORES].mean().reset_index()


def probes_table(probes: pd.DataFrame) -> pd.DataFrame:
    """Per vector kind, read by balanced accuracy against the label-shuffled control: chance (1 /
    classes), the control over all cells (layer x head x offset: mean, sd, max), the offset with the
    best balanced accuracy averaged over heads and layers next to the control there, and the best cell
    next to its own control.

    The best cell is the highest of many probes, so it is held against the highest control over the
    same cells (the best that choosing among as many probes with nothing to find gives): it beats its
    control only by a positive margin over that maximum.

    Each is also held against its token-identity control (the same probe on which token stands at the
    same position): beating it by less than token_margin means the probe reads the word, not the vector.
    The cell with the largest gain over its token-identity control is listed too, since a probe that
    reads more than the word may sit elsewhere than the best one."""
    rows = []
    for vector in ["key", "value"]:
        part = probes[probes.vector == vector]
        control = part.shuffled_balanced_accuracy
        by_offset = part.groupby("offset")[["balanced_accuracy", "shuffled_balanced_accuracy", "token_balanced_accuracy"]].mean()
        best_offset = int(by_offset.balanced_accuracy.idxmax())
        best = part.loc[part.balanced_accuracy.idxmax()]
        margin = float(best.balanced_accuracy - control.max())  # a tie (all at chance) is no margin, whatever the rounding
        gain = part.balanced_accuracy - part.token_balanced_accuracy
        most = part.loc[gain.idxmax()]
        clear = token_margin(part.n_samples.min())
        rows.append({
            "vector": vector, "target": PROBE_TARGET[vector], "n_cells": len(part),
            "chance": float(part.chance.mean()), "majority": float(part.majority.mean()),
            "control_mean": float(control.mean()), "control_sd": float(control.std(ddof=1)) if len(part) > 1 else float("nan"),
            "control_max": float(control.max()),
            "best_offset": best_offset,
            "best_offset_balanced_accuracy": float(by_offset.balanced_accuracy.loc[best_offset]),
            "best_offset_control": float(by_offset.shuffled_balanced_accuracy.loc[best_offset]),
            "best_offset_difference": float(by_offset.balanced_accuracy.loc[best_offset] - by_offset.shuffled_balanced_accuracy.loc[best_offset]),
            "best_offset_token": float(by_offset.token_balanced_accuracy.loc[best_offset]),
            "layer": int(best.layer), "head": int(best["head"]), "offset": int(best.offset),
            "balanced_accuracy": float(best.balanced_accuracy), "shuffled_balanced_accuracy": float(best.shuffled_balanced_accuracy),
            "difference": float(best.balanced_accuracy - best.shuffled_balanced_accuracy),
            "accuracy": float(best.accuracy), "margin_over_control_max": margin, "beats_control": bool(margin > _PROBE_TIE),
            "token_balanced_accuracy": float(best.token_balanced_accuracy),
            "token_difference": float(best.balanced_accuracy - best.token_balanced_accuracy),
            "token_margin": clear, "beats_token": bool(best.balanced_accuracy - best.token_balanced_accuracy > clear),
            "gain_layer": int(most.layer), "gain_head": int(most["head"]), "gain_offset": int(most.offset),
            "gain_balanced_accuracy": float(most.balanced_accuracy), "gain_token_balanced_accuracy": float(most.token_balanced_accuracy),
            "gain_difference": float(gain.max()),
            # the largest gain is itself chosen among many cells: it also has to beat the shuffled control's highest
            "gain_beats_token": bool(gain.max() > clear and most.balanced_accuracy - control.max() > _PROBE_TIE),
        })
    return pd.DataFrame(rows)


def probes_figure(probes: pd.DataFrame, title: str, out: str | Path, dpi: int) -> None:
    """Fig. 5: balanced accuracy of the probes by layer and offset from each demonstration's peak, keys
    and values, with chance, the label-shuffled control and, per offset, the token-identity control."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, vector in zip(axes, ["key", "value"]):
        part = probes[probes.vector == vector]
        by_offset = part.groupby(["offset", "layer"])[["balanced_accuracy", "shuffled_balanced_accuracy", "token_balanced_accuracy"]].mean()
        control = by_offset.shuffled_balanced_accuracy.unstack("offset")  # layer x offset, mean over heads
        ax.fill_between(control.index, control.min(axis=1), control.max(axis=1), color="grey", alpha=0.25, lw=0,
                        label="shuffled control (range over offsets)")
        ax.plot(control.index, control.mean(axis=1), color="grey", lw=1, ls=":")
        for offset in sorted(part.offset.unique()):
            line = by_offset.balanced_accuracy.loc[offset]
            (drawn,) = ax.plot(line.index, line.to_numpy(), marker="o", ms=3, lw=2.5 if offset == 0 else 1, label=f"offset {offset:+d}")
            token = by_offset.token_balanced_accuracy.loc[offset]
            ax.plot(token.index, token.to_numpy(), color=drawn.get_color(), ls="--", lw=1)
        ax.plot([], [], color="dimgrey", ls="--", lw=1, label="token identity at that offset (dashed, same colour)")
        ax.axhline(float(part.chance.mean()), color="black", ls="-.", lw=1, label="chance (1 / classes)")
        ax.set_title(PROBE_TARGET[vector], fontsize=10)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("held-out balanced accuracy (mean over heads)")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{title}: ridge probes on keys and values around each demonstration's peak")
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


# Plain accuracy within this of the majority share is read as "at the majority share".
MAJORITY_BAND = 0.02


def probe_verdict(r) -> str:
    """One line per vector kind: does the best cell beat its label-shuffled control?"""
    name = "key" if r.vector == "key" else "value"
    verdict = "beats" if r.beats_control else "does not beat"
    return (
        f"- Best {name} probe, L{r.layer} H{r.head} offset {r.offset:+d}: balanced accuracy {r.balanced_accuracy:.3f}, "
        f"its shuffled control {r.shuffled_balanced_accuracy:.3f} ({r.difference:+.3f}); the control's highest over all "
        f"{r.n_cells} cells is {r.control_max:.3f}, so it **{verdict} its shuffled control** "
        f"(margin {r.margin_over_control_max:+.3f}). Plain accuracy {r.accuracy:.3f}, majority share {r.majority:.3f}"
        + (": at the majority share, which shows nothing by itself." if r.accuracy <= r.majority + MAJORITY_BAND else ".")
    )


def token_verdict(r) -> str:
    """One line per vector kind: does the best cell read more than which word stands at its position?"""
    cell = f"L{r.layer} H{r.head} offset {r.offset:+d}"
    clear = f"a clear margin is over {r.token_margin:.3f}, two standard errors"
    if r.beats_token:
        return (f"- Best {r.vector} probe against token identity ({cell}): the token at that position alone reaches "
                f"{r.token_balanced_accuracy:.3f}, so at {r.balanced_accuracy:.3f} it **beats its token-identity control** "
                f"({r.token_difference:+.3f}; {clear}).")
    gain = (f"L{r.gain_layer} H{r.gain_head} offset {r.gain_offset:+d}: {r.gain_balanced_accuracy:.3f} against "
            f"{r.gain_token_balanced_accuracy:.3f} ({r.gain_difference:+.3f})")
    return (
        f"- Best {r.vector} probe against token identity ({cell}): it reaches {r.balanced_accuracy:.3f} balanced accuracy, "
        f"but the token at that position alone reaches {r.token_balanced_accuracy:.3f} ({r.token_difference:+.3f}; {clear}): "
        f"it **does not beat its token-identity control**, so it reads which word stands there, not {PROBE_READS[r.vector]} beyond it. "
        + (f"The largest gain over the token is at {gain}, a clear margin: there the {r.vector} carries more than its word."
           if r.gain_beats_token else
           f"No cell beats both its token by a clear margin and the shuffled control's highest (the largest gain: {gain}).")
    )


def probes_lines(table: pd.DataFrame, figure: str) -> list[str]:
    majority = ", ".join(f"{r.vector} {r.majority:.3f}" for r in table.itertuples())
    return [
        "**5.4 Where the kernel's features live.** Ridge probes (cross-validated, folds grouped by demonstration example)",
        "on each head's key and value vectors at offsets -1..+3 from the demonstration's highest-attention position,",
        "read by balanced accuracy (mean recall per class; any constant answer scores chance, 1 / classes) against a",
        "label-shuffled control: the same probe fitted on the target permuted across demonstration examples,",
        "and against a token-identity control: the same probe fitted on which token stands at the same position",
        "(a one-hot of its token id, all an input embedding of that one token can say). A probe within a clear margin",
        "of its token-identity control reads the word, not what the head's vector adds to it.",
        f"Plain accuracy is not read: always answering the most frequent class already scores the majority share ({majority}),",
        "so a probe at that share has learned nothing.",
        "A best cell beats its control when its balanced accuracy exceeds the control's highest over the same cells,",
        "since it is itself the highest of that many probes. The paper expects the peak at offset 0.",
        "",
        "| vector -> target | chance | shuffled control: mean ± sd (max) over cells "
        "| best offset (mean over heads): balanced, shuffled control, difference, token identity "
        "| best head: layer, head, offset: balanced, shuffled control, difference, token identity, difference |",
        "|---|---|---|---|---|",
        *[f"| {table_cell(r.target)} | {r.chance:.3f} | {r.control_mean:.3f} ± {r.control_sd:.3f} ({r.control_max:.3f}) "
          f"| {r.best_offset:+d}: {r.best_offset_balanced_accuracy:.3f}, {r.best_offset_control:.3f}, {r.best_offset_difference:+.3f}, "
          f"{r.best_offset_token:.3f} "
          f"| L{r.layer} H{r.head} offset {r.offset:+d}: {r.balanced_accuracy:.3f}, {r.shuffled_balanced_accuracy:.3f}, "
          f"{r.difference:+.3f}, {r.token_balanced_accuracy:.3f}, {r.token_difference:+.3f} |" for r in table.itertuples()],
        "",
        *[line for r in table.itertuples() for line in (probe_verdict(r), token_verdict(r))],
        "",
        f"![probes]({figure})",
        "",
    ]


def render_probes(probes: pd.DataFrame, title: str, out: Outputs, dpi: int) -> None:
    probes = mean_probes(probes)
    probes_figure(probes, title, out.figure, dpi)
    table = probes_table(probes)
    write_table(table, out, f"{title}: ridge probes on keys and values, balanced accuracy against a label-shuffled "
                            "and a token-identity control")
    write_piece(out.piece, probes_lines(table, link(out.figure)))


# Theorem 1 ---------------------------------------------------------------------------------------


def theory_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The rows pooled over HMM seeds, our numbers beside the paper's Table 3, per HMM construction (variant)."""
    pooled = table[table.hmm_seed.isna()]
    columns = ["variant", "kernel", "n_demos", "distance_mean", "distance_ci_low", "distance_ci_high", "paper_distance",
               "agreement_mean", "agreement_ci_low", "agreement_ci_high", "paper_agreement", "n_prompts"]
    return pooled[columns].reset_index(drop=True)


def theory_lines(summary: str, figure: str) -> list[str]:
    """The synthetic Theorem 1 check, as the theory rule wrote it (every construction beside Table 3 and
    which one matches it best), with its figure."""
    return [summary.strip(), "", f"![kernel regression vs. posterior]({figure})", ""]


def render_theory(table: pd.DataFrame, summary: str, figure: str, out: Outputs) -> None:
    write_table(theory_frame(table), out, "Theorem 1 on synthetic HMMs: kernel regression vs. the exact posterior")
    write_piece(out.piece, theory_lines(summary, link(figure)))


# results/report.md -------------------------------------------------------------------------------


def header_lines(title: str, study: dict) -> list[str]:
    return [
        f"# {title}",
        "",
        f"Models: {', '.join(study['models'])}. Tasks: {', '.join(study['tasks'])}. "
        f"Seeds: {', '.join(map(str, study['seeds']))}. Settings: {', '.join(study['settings'])}. "
        f"Prompts per set: {study['n_eval']} ({study['n_select']} to select heads, {study['n_heldout']} held out), "
        f"demonstrations per prompt: {study['k']}. "
        + ("Every prompt starts with the model's BOS token (prompts.prepend_bos)." if study["prepend_bos"]
           else "Prompts start with the template's first token unless the tokenizer adds a BOS token (prompts.prepend_bos: false)."),
        "",
        "Each attention head is read as a kernel regression over the demonstrations: demonstration i gets",
        "weight a_i from the last token's attention and the head predicts argmax_c sum_i a_i [y_i = c].",
        "Agreement is how often that reconstruction equals the model's own ICL prediction; the null",
        "baseline is the agreement of always answering the model's most frequent prediction, and the",
        "query-free readings (recency, the uniform kernel, a positional and a slot x label-word kernel, fitted",
        "on the select split) are what a head must beat before it reads like a kernel.",
        "",
        *small_sample_lines(study),
    ]


def small_sample_lines(study: dict) -> list[str]:
    """A warning at the top when Table 2's splits are too small to read (stats.MIN_EXAMPLES)."""
    few = [f"{key} = {study[key]}" for key in ("n_select", "n_heldout") if stats.too_few(study[key])]
    if not few:
        return []
    return [f"**Too few examples to read:** analysis.{', analysis.'.join(few)}, fewer than {stats.MIN_EXAMPLES}. Table 2, "
            "the causal check and the ablations all rest on the held-out prompts; their intervals are marked † or replaced "
            "by a 'too few to read' note, and no verdict is drawn from them. Raise prompts.n_eval and analysis.n_select / "
            "n_heldout for numbers to report.", ""]


def table2_heading() -> list[str]:
    return ["## Table 2 (Section 5.5): one head, chosen on the select split, on held-out prompts", "", *paper_table()]


def set_heading(title: str, summaries: list[pd.DataFrame]) -> list[str]:
    """A prompt set's heading and its whole-set numbers, over seeds."""
    summary = pd.concat(summaries)
    return [
        f"## {title}",
        "",
        f"All {int(summary.n_prompts.iloc[0])} prompts per seed, {len(summaries)} seeds: ICL accuracy {mean_sd(summary.icl_accuracy)}; "
        f"null baseline: agreement {mean_sd(summary.null_agreement)}, accuracy {mean_sd(summary.null_accuracy)}. "
        "Query-free readings fitted on all prompts (in-sample, like 5.2's best head), agreement with ICL: "
        f"recency {mean_sd(summary.recency_agreement)}, uniform kernel {mean_sd(summary.uniform_agreement)} "
        f"(ties on {summary.uniform_tie_rate.mean():.0%} of prompts), positional kernel {mean_sd(summary.positional_agreement)}, "
        f"slot x label-word kernel {mean_sd(summary.slot_label_agreement)}.",
        "",
    ]


def assemble(
    title: str, study: dict, tables2: list[list[str]], sets: list[tuple[str, list[pd.DataFrame], list[list[str]]]],
    ablations: list[str], interventions: list[str], theory: list[str], warnings: list[str] = (),
) -> str:
    """results/report.md: the run's warnings, Table 2 (the paper's headline), then Sections 5.1-5.4 per
    model x task x setting (title, its summaries over seeds, its pieces), the Section 4.2 ablations,
    the causal check and the theorem check."""
    lines = header_lines(title, study) + list(warnings) + table2_heading()
    for piece in tables2:
        lines += piece
    for set_name, summaries, pieces in sets:
        lines += set_heading(set_name, summaries)
        for piece in pieces:
            lines += piece
    return "\n".join(lines + ablations + interventions + theory) + "\n"


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def assemble_from_snakemake(smk) -> None:
    """Pieces come per model x task x setting in params.sets order; summaries are every seed of each."""
    keys, study = smk.params.sets, smk.params.study
    summaries = chunks(read_all(list(smk.input.summaries), schemas.SUMMARY), len(study["seeds"]))
    # Without keys and values kept (extraction.kv_layers empty) there are no probes: say so in their place.
    probes = [read_piece(p) for p in smk.input.probes] or [[PROBES_OFF, ""]] * len(keys)
    pieces = zip(*([read_piece(p) for p in smk.input[name]] for name in ("attention", "heads", "similarity")), probes)
    sets = [(set_title(*key), seeds, list(parts)) for key, seeds, parts in zip(keys, summaries, pieces)]
    ablations = []
    per_model = chunks([read_piece(p) for p in smk.input.ablations], len(smk.params.ablations) or 1)
    for model, model_pieces in zip(study["models"], per_model):
        ablations += ablation_report.heading(model) + [line for piece in model_pieces for line in piece]
    # With several models, their side-by-side view follows every model's Table 2.
    verdicts = table2_verdicts({set_title(*key): schemas.read_table(path, schemas.TABLE2).to_pandas()
                                for key, path in zip(keys, smk.input.table2_tables)})
    tables2 = [verdicts, *(read_piece(p) for p in [*smk.input.table2, *smk.input.models])]
    pieces = [line for p in smk.input.interventions for line in read_piece(p)]
    interventions = interventions_report.heading() + pieces if pieces else []
    warnings = run_warnings.warning_lines(run_warnings.study_warnings(paths.LOGS))
    Path(smk.output[0]).write_text(
        assemble(smk.params.title, study, tables2, sets, ablations, interventions, read_piece(smk.input.theory), warnings))


def title_of(smk) -> str:
    return set_title(smk.wildcards.model, smk.wildcards.task, smk.wildcards.setting)


def seeded(smk, name: str, schema) -> pd.DataFrame:
    """stacked, with each table's seed (study order) in a `seed` column."""
    return table2.read_seeds(list(smk.input[name]), smk.params.seeds, schema)


def stacked(smk, name: str, schema) -> pd.DataFrame:
    """An analysis table of every seed of the rule's model x task x setting, stacked."""
    return pd.concat(read_all(smk.input[name], schema))


RENDERERS = {
    "report_attention": lambda smk, out: render_attention(
        read_all(smk.input.maps, schemas.ATTENTION_MAP), read_all(smk.input.label_mass, schemas.LABEL_MASS),
        title_of(smk), out, smk.params.dpi),
    "report_heads": lambda smk, out: render_heads(
        seeded(smk, "heads", schemas.HEADS), title_of(smk), smk.params.top_head_fraction, out, smk.params.dpi,
        seeded(smk, "query_swap", schemas.QUERY_SWAP) if smk.input.query_swap else None),
    "report_similarity": lambda smk, out: render_similarity(
        stacked(smk, "similarity", schemas.SIMILARITY), stacked(smk, "heads", schemas.HEADS), title_of(smk), out,
        smk.params.dpi),
    "report_probes": lambda smk, out: render_probes(
        stacked(smk, "probes", schemas.PROBES), title_of(smk), out, smk.params.dpi),
    "report_theory": lambda smk, out: render_theory(
        schemas.read_table(smk.input.table, schemas.THEORY).to_pandas(), Path(smk.input.summary).read_text(),
        smk.input.figure, out),
}


def from_snakemake(smk) -> None:
    if smk.rule == "report":
        assemble_from_snakemake(smk)
    else:
        RENDERERS[smk.rule](smk, outputs_of(smk))
