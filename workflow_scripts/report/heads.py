"""Section 5.2 in the report, per model x task x setting (mean over seeds): Fig. 3, every head read as
a kernel regression (agreement with the ICL prediction, accuracy, query dependence), the best head per
kernel beside the paper's, where the top heads sit in depth and how much attention the sink holds."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from workflow_scripts.core import paper, tables  # noqa: E402
from workflow_scripts.core.kernels import ATTENTION_KERNELS  # noqa: E402
from workflow_scripts.core import aggregate  # noqa: E402
from workflow_scripts.report import frames  # noqa: E402
from workflow_scripts.report.files import Outputs, link, outputs_of, write_piece, write_table  # noqa: E402
from workflow_scripts.report.head_tables import (  # noqa: E402
    QUERY_COLUMNS,
    head_grid,
    head_table,
    layer_head_axes,
    top_head_depth,
    top_heads,
    with_query_swap,
)
from workflow_scripts.report.inputs import seeded, title_of  # noqa: E402

KERNEL_TEXT = {
    "max": "max attention over [x_i, y_i] (paper)",
    "label": "attention on the label token y_i",
    "mean": "mean attention over [x_i, y_i]",
    "max_nosink": "max attention over [x_i, y_i] without position 0 (the attention sink)",
}
PAPER_52 = (f"Paper (GPT-J-6B, sst2, max kernel): best head L{paper.BEST_HEAD['layer']} H{paper.BEST_HEAD['head']}, "
            f"{paper.BEST_HEAD['agreement']:.1%} agreement with the ICL prediction, {paper.BEST_HEAD['accuracy']:.1%} accuracy.")
HEATMAP_TEXT = {
    "agreement": "agreement with ICL",
    "accuracy": "accuracy vs. gold",
    "r2_slot_label": "R² of weights on slot x label (1 = query-free)",
    "weight_shift": "weight shift when only the query changes",
}


def heatmaps(heads: pl.DataFrame, title: str, out: str | Path, dpi: int) -> None:
    """Fig. 3: layer x head agreement with the ICL prediction and accuracy, every kernel, mean over seeds;
    beside it the query dependence of each head (R^2 on slot x label, the query-swap weight shift)."""
    metrics = [m for m in HEATMAP_TEXT if heads[m].fill_nan(None).is_not_null().any()]
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


def max_kernel_row(best_heads: pl.DataFrame) -> dict:
    return frames.first_row(best_heads.filter(pl.col("kernel") == "max"))


def sink_lines(heads: pl.DataFrame, best_heads: pl.DataFrame) -> list[str]:
    """How much of the last token's attention sits on position 0, which without a BOS token is inside
    the first demonstration's span and inflates its max-kernel weight (`best_heads`: head_table's)."""
    sink = aggregate.group_stats(heads, ["layer", "head"], ["sink_attention"])
    values = aggregate.values_of(sink["sink_attention"])
    top = int(np.nanargmax(values))  # the first head of the highest
    layer, head = sink["layer"][top], sink["head"][top]
    best = max_kernel_row(best_heads)
    at_best = frames.first_row(sink.filter((pl.col("layer") == best["layer"]) & (pl.col("head") == best["head"])))
    return [
        f"Position 0 (the attention sink when the prompt has no BOS token) holds {aggregate.mean(values):.2f} of the last token's "
        f"attention on average over heads, {values[top]:.2f} in L{layer} H{head}; the best max-kernel head L{best['layer']} H{best['head']} "
        f"puts {at_best['sink_attention']:.2f} there. The sink-free row reads the same max kernel without position 0.",
        "",
    ]


def heads_lines(heads: pl.DataFrame, fraction: float, figure: str) -> list[str]:
    lines = [
        "**5.2 Heads as kernels** (best head chosen on all prompts, in-sample; Table 2 above holds it out).",
        PAPER_52,
        "",
        "| kernel weight a_i | best head | agreement with ICL prediction | accuracy vs. gold | "
        f"top {fraction:.0%} heads by agreement: depth (layer / last layer) | R² slot / slot x label | query swap: weight shift / vote change |",
        "|---|---|---|---|---|---|---|",
    ]
    best_heads = head_table(heads)
    for row in frames.rows(best_heads):
        n, mean, low, high = top_head_depth(heads, row["kernel"], fraction)
        swap = "—" if np.isnan(row["weight_shift"]) else f"{row['weight_shift']:.2f} / {row['vote_change']:.0%}"
        lines.append(
            f"| {KERNEL_TEXT[row['kernel']]} | L{row['layer']} H{row['head']} | {row['agreement']} | {row['accuracy']} "
            f"| {n} heads, mean {mean:.2f} (range {low:.2f}-{high:.2f}) | {row['r2_slot']:.2f} / {row['r2_slot_label']:.2f} | {swap} |"
        )
    return lines + ["", *query_lines(heads, best_heads), *sink_lines(heads, best_heads), f"![per-head reconstruction]({figure})", ""]


def query_lines(heads: pl.DataFrame, best_heads: pl.DataFrame) -> list[str]:
    """How query-dependent the best heads are, against every head: a kernel's weights must move with
    the query, a positional or label-word head's are a fixed profile (R^2 near 1, no shift)."""
    mean = aggregate.group_stats(heads, ["kernel", "layer", "head"], QUERY_COLUMNS)
    best = max_kernel_row(best_heads)
    lines = [
        f"Query dependence: slot and slot x label word explain {best['r2_slot']:.0%} and {best['r2_slot_label']:.0%} of the "
        f"variance of the best max-kernel head's normalized weights (median over heads {aggregate.median(mean['r2_slot']):.0%} and "
        f"{aggregate.median(mean['r2_slot_label']):.0%}); the rest varies with the query and the demonstrations' inputs."
    ]
    if not np.isnan(best["weight_shift"]):
        icl = aggregate.mean(heads["icl_change"].fill_nan(None).drop_nulls()) if "icl_change" in heads.columns else float("nan")
        lines.append(
            f"With the same demonstrations and another held-out query, its weights move by {best['weight_shift']:.2f} "
            f"(total variation; 0 = the query does not matter, median over heads {aggregate.median(mean['weight_shift']):.2f}) and its vote "
            f"changes on {best['vote_change']:.0%} of prompts, the ICL prediction on {icl:.0%}."
        )
    return [" ".join(lines), ""]


def write_heads_section(heads: pl.DataFrame, title: str, fraction: float, out: Outputs, dpi: int,
                        swap: pl.DataFrame | None = None) -> None:
    heads = with_query_swap(heads, swap)
    heatmaps(heads, title, out.figure, dpi)
    write_table(top_heads(heads, fraction), out, f"{title}: the top {fraction:.0%} heads by agreement",
                [f"Kernel weights: {'; '.join(f'{k} = {text}' for k, text in KERNEL_TEXT.items())}.", PAPER_52])
    write_piece(out.piece, heads_lines(heads, fraction, link(out.figure)))


def from_snakemake(smk) -> None:
    swap = seeded(smk, "query_swap", tables.QUERY_SWAP) if smk.input.query_swap else None
    write_heads_section(seeded(smk, "heads", tables.HEADS), title_of(smk), smk.params.top_head_fraction, outputs_of(smk),
                        smk.params.dpi, swap)
