"""Section 5.1 in the report, per model x task x setting (mean over seeds): Fig. 2, the last token's
attention averaged over prompts on the aligned prompt axis, and how much more than uniform it attends
to the label tokens, per layer."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

from workflow_scripts.core import tables  # noqa: E402
from workflow_scripts.report.files import Outputs, link, outputs_of, write_piece, write_table  # noqa: E402
from workflow_scripts.report.inputs import read_all, title_of  # noqa: E402


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


def write_attention_section(maps: list[pd.DataFrame], masses: list[pd.DataFrame], title: str, out: Outputs, dpi: int) -> None:
    attention_figure(maps, title, out.figure, dpi)
    table = label_mass_table(masses)
    write_table(table, out, f"{title}: attention on the label tokens per layer")
    write_piece(out.piece, [*label_mass_lines(table), f"![averaged attention]({link(out.figure)})", ""])


def from_snakemake(smk) -> None:
    write_attention_section(read_all(smk.input.maps, tables.ATTENTION_MAP), read_all(smk.input.label_mass, tables.LABEL_MASS),
                            title_of(smk), outputs_of(smk), smk.params.dpi)
