"""Section 5.4 in the report, per model x task x setting (mean over seeds): Fig. 5, ridge probes on
each head's key and value vectors around each demonstration's peak, read by balanced accuracy against
a label-shuffled and a token-identity control, and whether the best probes beat them."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from workflow_scripts.core import tables  # noqa: E402
from workflow_scripts.core import aggregate  # noqa: E402
from workflow_scripts.report import frames  # noqa: E402
from workflow_scripts.report.files import Outputs, link, outputs_of, write_piece, write_table  # noqa: E402
from workflow_scripts.report.inputs import stacked, title_of  # noqa: E402
from workflow_scripts.report.text import table_cell  # noqa: E402

PROBE_TARGET = {"key": "key -> argmax P(o|x_i) (zero-shot)", "value": "value -> y_i (label)"}


# Balanced accuracies are ratios of counts below a few thousand; differences under this are rounding.
_PROBE_TIE = 1e-9
PROBE_SCORES = ["accuracy", "majority", "balanced_accuracy", "shuffled_balanced_accuracy", "token_balanced_accuracy",
                "chance", "n_samples"]
# Read per offset (mean over heads, or over layers and heads).
OFFSET_SCORES = ["balanced_accuracy", "shuffled_balanced_accuracy", "token_balanced_accuracy"]
PROBE_READS = {"key": "a key that carries x_i's zero-shot answer", "value": "a value that carries e(y_i)"}


def token_margin(n_samples: float) -> float:
    """The clear margin a probe must beat its token-identity control by: two standard errors of a
    balanced accuracy at its widest (recall 1/2), 2 * 0.5 / sqrt(n) over the n demonstrations scored."""
    return float(1.0 / np.sqrt(n_samples))


def mean_probes(probes: pl.DataFrame) -> pl.DataFrame:
    """Probe scores per vector kind, offset, layer and head, mean over seeds."""
    return aggregate.group_stats(probes, ["vector", "offset", "layer", "head"], PROBE_SCORES)


def probes_table(probes: pl.DataFrame) -> pl.DataFrame:
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
        part = probes.filter(pl.col("vector") == vector)
        cells = frames.rows(part)
        control = aggregate.values_of(part["shuffled_balanced_accuracy"])
        by_offset = frames.rows(aggregate.group_stats(part, ["offset"], OFFSET_SCORES, blocks=[OFFSET_SCORES]))
        at_offset = by_offset[int(np.nanargmax([r["balanced_accuracy"] for r in by_offset]))]  # the first of the highest
        best = cells[int(np.nanargmax(aggregate.values_of(part["balanced_accuracy"])))]
        margin = float(best["balanced_accuracy"] - np.nanmax(control))  # a tie (all at chance) is no margin, whatever the rounding
        gain = aggregate.values_of(part["balanced_accuracy"]) - aggregate.values_of(part["token_balanced_accuracy"])
        most = cells[int(np.nanargmax(gain))]
        clear = token_margin(np.nanmin(aggregate.values_of(part["n_samples"])))
        rows.append({
            "vector": vector, "target": PROBE_TARGET[vector], "n_cells": part.height,
            "chance": aggregate.mean(part["chance"]), "majority": aggregate.mean(part["majority"]),
            "control_mean": aggregate.mean(control), "control_sd": aggregate.sd(control) if part.height > 1 else float("nan"),
            "control_max": float(np.nanmax(control)),
            "best_offset": int(at_offset["offset"]),
            "best_offset_balanced_accuracy": float(at_offset["balanced_accuracy"]),
            "best_offset_control": float(at_offset["shuffled_balanced_accuracy"]),
            "best_offset_difference": float(at_offset["balanced_accuracy"] - at_offset["shuffled_balanced_accuracy"]),
            "best_offset_token": float(at_offset["token_balanced_accuracy"]),
            "layer": int(best["layer"]), "head": int(best["head"]), "offset": int(best["offset"]),
            "balanced_accuracy": float(best["balanced_accuracy"]), "shuffled_balanced_accuracy": float(best["shuffled_balanced_accuracy"]),
            "difference": float(best["balanced_accuracy"] - best["shuffled_balanced_accuracy"]),
            "accuracy": float(best["accuracy"]), "margin_over_control_max": margin, "beats_control": bool(margin > _PROBE_TIE),
            "token_balanced_accuracy": float(best["token_balanced_accuracy"]),
            "token_difference": float(best["balanced_accuracy"] - best["token_balanced_accuracy"]),
            "token_margin": clear, "beats_token": bool(best["balanced_accuracy"] - best["token_balanced_accuracy"] > clear),
            "gain_layer": int(most["layer"]), "gain_head": int(most["head"]), "gain_offset": int(most["offset"]),
            "gain_balanced_accuracy": float(most["balanced_accuracy"]), "gain_token_balanced_accuracy": float(most["token_balanced_accuracy"]),
            "gain_difference": float(np.nanmax(gain)),
            # the largest gain is itself chosen among many cells: it also has to beat the shuffled control's highest
            "gain_beats_token": bool(np.nanmax(gain) > clear and most["balanced_accuracy"] - np.nanmax(control) > _PROBE_TIE),
        })
    return pl.DataFrame(rows)


def probes_figure(probes: pl.DataFrame, title: str, out: str | Path, dpi: int) -> None:
    """Fig. 5: balanced accuracy of the probes by layer and offset from each demonstration's peak, keys
    and values, with chance, the label-shuffled control and, per offset, the token-identity control."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, vector in zip(axes, ["key", "value"]):
        part = probes.filter(pl.col("vector") == vector)
        by_offset = aggregate.group_stats(part, ["offset", "layer"], OFFSET_SCORES, blocks=[OFFSET_SCORES])
        layers = by_offset["layer"].unique().sort().to_numpy()
        control = aggregate.grid(by_offset, "layer", "offset", "shuffled_balanced_accuracy")  # layer x offset, mean over heads
        ax.fill_between(layers, np.nanmin(control, axis=1), np.nanmax(control, axis=1), color="grey", alpha=0.25, lw=0,
                        label="shuffled control (range over offsets)")
        ax.plot(layers, aggregate.row_means(control), color="grey", lw=1, ls=":")
        for offset in part["offset"].unique().sort().to_list():
            line = by_offset.filter(pl.col("offset") == offset)
            (drawn,) = ax.plot(line["layer"].to_numpy(), aggregate.values_of(line["balanced_accuracy"]), marker="o", ms=3,
                               lw=2.5 if offset == 0 else 1, label=f"offset {offset:+d}")
            ax.plot(line["layer"].to_numpy(), aggregate.values_of(line["token_balanced_accuracy"]), color=drawn.get_color(), ls="--", lw=1)
        ax.plot([], [], color="dimgrey", ls="--", lw=1, label="token identity at that offset (dashed, same colour)")
        ax.axhline(aggregate.mean(part["chance"]), color="black", ls="-.", lw=1, label="chance (1 / classes)")
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


def probe_verdict(r: dict) -> str:
    """One line per vector kind: does the best cell beat its label-shuffled control?"""
    name = "key" if r["vector"] == "key" else "value"
    verdict = "beats" if r["beats_control"] else "does not beat"
    return (
        f"- Best {name} probe, L{r['layer']} H{r['head']} offset {r['offset']:+d}: balanced accuracy {r['balanced_accuracy']:.3f}, "
        f"its shuffled control {r['shuffled_balanced_accuracy']:.3f} ({r['difference']:+.3f}); the control's highest over all "
        f"{r['n_cells']} cells is {r['control_max']:.3f}, so it **{verdict} its shuffled control** "
        f"(margin {r['margin_over_control_max']:+.3f}). Plain accuracy {r['accuracy']:.3f}, majority share {r['majority']:.3f}"
        + (": at the majority share, which shows nothing by itself." if r["accuracy"] <= r["majority"] + MAJORITY_BAND else ".")
    )


def token_verdict(r: dict) -> str:
    """One line per vector kind: does the best cell read more than which word stands at its position?"""
    cell = f"L{r['layer']} H{r['head']} offset {r['offset']:+d}"
    clear = f"a clear margin is over {r['token_margin']:.3f}, two standard errors"
    if r["beats_token"]:
        return (f"- Best {r['vector']} probe against token identity ({cell}): the token at that position alone reaches "
                f"{r['token_balanced_accuracy']:.3f}, so at {r['balanced_accuracy']:.3f} it **beats its token-identity control** "
                f"({r['token_difference']:+.3f}; {clear}).")
    gain = (f"L{r['gain_layer']} H{r['gain_head']} offset {r['gain_offset']:+d}: {r['gain_balanced_accuracy']:.3f} against "
            f"{r['gain_token_balanced_accuracy']:.3f} ({r['gain_difference']:+.3f})")
    return (
        f"- Best {r['vector']} probe against token identity ({cell}): it reaches {r['balanced_accuracy']:.3f} balanced accuracy, "
        f"but the token at that position alone reaches {r['token_balanced_accuracy']:.3f} ({r['token_difference']:+.3f}; {clear}): "
        f"it **does not beat its token-identity control**, so it reads which word stands there, not {PROBE_READS[r['vector']]} beyond it. "
        + (f"The largest gain over the token is at {gain}, a clear margin: there the {r['vector']} carries more than its word."
           if r["gain_beats_token"] else
           f"No cell beats both its token by a clear margin and the shuffled control's highest (the largest gain: {gain}).")
    )


def probes_lines(table: pl.DataFrame, figure: str) -> list[str]:
    rows = frames.rows(table)
    majority = ", ".join(f"{r['vector']} {r['majority']:.3f}" for r in rows)
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
        *[f"| {table_cell(r['target'])} | {r['chance']:.3f} | {r['control_mean']:.3f} ± {r['control_sd']:.3f} ({r['control_max']:.3f}) "
          f"| {r['best_offset']:+d}: {r['best_offset_balanced_accuracy']:.3f}, {r['best_offset_control']:.3f}, {r['best_offset_difference']:+.3f}, "
          f"{r['best_offset_token']:.3f} "
          f"| L{r['layer']} H{r['head']} offset {r['offset']:+d}: {r['balanced_accuracy']:.3f}, {r['shuffled_balanced_accuracy']:.3f}, "
          f"{r['difference']:+.3f}, {r['token_balanced_accuracy']:.3f}, {r['token_difference']:+.3f} |" for r in rows],
        "",
        *[line for r in rows for line in (probe_verdict(r), token_verdict(r))],
        "",
        f"![probes]({figure})",
        "",
    ]


def write_probes_section(probes: pl.DataFrame, title: str, out: Outputs, dpi: int) -> None:
    probes = mean_probes(probes)
    probes_figure(probes, title, out.figure, dpi)
    table = probes_table(probes)
    write_table(table, out, f"{title}: ridge probes on keys and values, balanced accuracy against a label-shuffled "
                            "and a token-identity control")
    write_piece(out.piece, probes_lines(table, link(out.figure)))


def from_snakemake(smk) -> None:
    write_probes_section(stacked(smk, "probes", tables.PROBES), title_of(smk), outputs_of(smk), smk.params.dpi)
