"""Section 5.1 in the report, per model x task x setting (mean over seeds): Fig. 2, the last token's
attention averaged over prompts on the aligned prompt axis, and how much more than uniform it attends
to the label tokens, per layer."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

from workflow_scripts.core import tables  # noqa: E402
from workflow_scripts.core import aggregate  # noqa: E402
from workflow_scripts.report.files import Outputs, link, outputs_of, write_piece, write_table  # noqa: E402
from workflow_scripts.report.inputs import read_all, title_of  # noqa: E402


def label_mass_table(masses: list[pl.DataFrame]) -> pl.DataFrame:
    """Per layer, mean over seeds: the label tokens' share of the last token's attention, their share
    of prompt positions, and the ratio of the two (1 = uniform)."""
    return aggregate.group_stats(pl.concat(masses), ["layer"], ["label_mass", "label_share", "ratio"])


def label_mass_lines(table: pl.DataFrame) -> list[str]:
    """Section 5.1's number: how much more than uniform the last token attends to the label tokens."""
    ratio, mass = aggregate.values_of(table["ratio"]), aggregate.values_of(table["label_mass"])
    peak = int(np.nanargmax(ratio))  # the first layer of the highest
    above = int((table["ratio"] > 1).sum())
    cells = " ".join(f"{r:.1f}" for r in ratio)
    return [
        f"**5.1 Label tokens.** They are {aggregate.values_of(table['label_share'])[0]:.1%} of prompt positions. Their share of the last token's",
        f"attention, divided by that, per layer (1 = uniform): {cells}. Above uniform in {above} of {table.height} layers;",
        f"the peak is layer {table['layer'][peak]}, with {mass[peak]:.1%} of the attention ({ratio[peak]:.1f}x uniform).",
        "",
    ]


def attention_figure(maps: list[pl.DataFrame], title: str, out: str | Path, dpi: int) -> None:
    """Fig. 2: last-token attention averaged over prompts (and seeds) on the aligned prompt axis."""
    maps = [m for m in maps if m.height == maps[0].height]
    frame = aggregate.group_stats(pl.concat(maps), ["layer", "head", "column"], ["attention"])
    n_layers = frame["layer"].max() + 1
    n_heads = frame["head"].max() + 1
    grid = aggregate.values_of(frame["attention"]).reshape(n_layers * n_heads, -1)
    first = maps[0].filter((pl.col("layer") == 0) & (pl.col("head") == 0)).sort("column", maintain_order=True)
    segment = first["segment"].to_numpy()
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


def write_attention_section(maps: list[pl.DataFrame], masses: list[pl.DataFrame], title: str, out: Outputs, dpi: int) -> None:
    attention_figure(maps, title, out.figure, dpi)
    table = label_mass_table(masses)
    write_table(table, out, f"{title}: attention on the label tokens per layer")
    write_piece(out.piece, [*label_mass_lines(table), f"![averaged attention]({link(out.figure)})", ""])


def from_snakemake(smk) -> None:
    write_attention_section(read_all(smk.input.maps, tables.ATTENTION_MAP), read_all(smk.input.label_mass, tables.LABEL_MASS),
                            title_of(smk), outputs_of(smk), smk.params.dpi)
