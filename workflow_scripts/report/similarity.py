"""Section 5.3 in the report, per model x task x setting (mean over seeds): Fig. 4, per head the
correlation of its kernel weights with the prediction similarity P(o|x_test)·P(o|x_i), read over the
label words and over the whole vocabulary, and how that heatmap tracks the agreement heatmap of 5.2."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from workflow_scripts.core import stats, tables  # noqa: E402
from workflow_scripts.core.kernels import ATTENTION_KERNELS  # noqa: E402
from workflow_scripts.core import aggregate  # noqa: E402
from workflow_scripts.report import frames  # noqa: E402
from workflow_scripts.report.files import Outputs, link, outputs_of, write_piece, write_table  # noqa: E402
from workflow_scripts.report.head_tables import head_grid, layer_head_axes  # noqa: E402
from workflow_scripts.report.inputs import stacked, title_of  # noqa: E402

SIMILARITY_TEXT = {
    "label_words": "label words: P(o|x) over the label words (the paper's experiments)",
    "next_token": "next token: P(o|x) over the whole vocabulary (the theory's), from each example's top k",
}


def similarity_table(sim: pl.DataFrame, heads: pl.DataFrame) -> pl.DataFrame:
    """Per similarity and kernel: the head whose weights correlate best with the prediction similarity,
    the share of heads with a positive correlation, and how the correlation heatmap tracks the
    agreement heatmap."""
    rows = []
    for similarity in SIMILARITY_TEXT:
        part = sim.filter(pl.col("similarity") == similarity)
        for kernel in ATTENTION_KERNELS:
            grid = head_grid(part, kernel, "pearson")
            layer, head = np.unravel_index(np.nanargmax(grid), grid.shape)
            rows.append({
                "similarity": similarity, "kernel": kernel, "layer": int(layer), "head": int(head),
                "pearson": float(grid[layer, head]), "share_positive": float(np.mean(grid > 0)),
                "corr_with_agreement": stats.pearson(grid.ravel(), head_grid(heads, kernel, "agreement").ravel()),
            })
    return pl.DataFrame(rows)


def similarity_figure(sim: pl.DataFrame, title: str, out: str | Path, dpi: int) -> None:
    """Fig. 4: per head, Pearson(kernel weight, prediction similarity), one row per reading of P(o|x)."""
    fig, axes = plt.subplots(len(SIMILARITY_TEXT), len(ATTENTION_KERNELS), figsize=(4 * len(ATTENTION_KERNELS), 8.5),
                             sharey=True, squeeze=False)
    for row, similarity in zip(axes, SIMILARITY_TEXT):
        part = sim.filter(pl.col("similarity") == similarity)
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


def similarity_lines(table: pl.DataFrame, n_pairs: int, bound: float, figure: str) -> list[str]:
    rows = frames.rows(table)
    by = {(r["similarity"], r["kernel"]): r["corr_with_agreement"] for r in rows}
    closer, other = sorted(SIMILARITY_TEXT, key=lambda s: by[s, "max"], reverse=True)
    values = f"{closer.replace('_', ' ')} {by[closer, 'max']:.3f}, {other.replace('_', ' ')} {by[other, 'max']:.3f}"
    if by[closer, "max"] <= 0:
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
        *[f"| {r['similarity'].replace('_', ' ')} | {r['kernel']} | L{r['layer']} H{r['head']}: {r['pearson']:.3f} | "
          f"{r['share_positive']:.0%} | {r['corr_with_agreement']:.3f} |" for r in rows],
        "",
        verdict,
        "",
        f"![prediction similarity]({figure})",
        "",
    ]


def write_similarity_section(sim: pl.DataFrame, heads: pl.DataFrame, title: str, out: Outputs, dpi: int) -> None:
    similarity_figure(sim, title, out.figure, dpi)
    table = similarity_table(sim, heads)
    write_table(table, out, f"{title}: kernel weights vs. prediction similarity (label words and next token)")
    bound = float(np.nanmax(aggregate.values_of(sim["truncation_bound"])))
    write_piece(out.piece, similarity_lines(table, int(sim["n_pairs"][0]), bound, link(out.figure)))


def from_snakemake(smk) -> None:
    write_similarity_section(stacked(smk, "similarity", tables.SIMILARITY), stacked(smk, "heads", tables.HEADS),
                             title_of(smk), outputs_of(smk), smk.params.dpi)
