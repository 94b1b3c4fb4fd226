"""The figure of the Theorem 1 check: distance and agreement against n, per variant, beside Table 3."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from workflow_scripts.core import paper  # noqa: E402
from workflow_scripts.theory.metrics import DISTANCE_NAME, TABLE3_METRICS  # noqa: E402
from workflow_scripts.theory.operator_kernel import THEOREM_KERNELS  # noqa: E402
from workflow_scripts.theory.variants import aggregate_rows, variant_params, variant_rows  # noqa: E402


def plot_convergence(rows: list[dict[str, Any]], params: dict[str, Any], path: str | Path) -> None:
    """Per variant (one row of panels each): distance and agreement against n (log2 axis) with CI
    bands, the paper's Table 3 as markers."""
    variants = variant_params(params)
    figure, grid = plt.subplots(len(variants), 2, figsize=(10, 3.6 * len(variants)), squeeze=False)
    paper_n = sorted(paper.TABLE3)
    for axes, (name, v) in zip(grid, variants.items()):
        for kernel in v["kernels"]:
            ours = aggregate_rows(variant_rows(rows, name), kernel)
            n = [r["n_demos"] for r in ours]
            for axis, metric in zip(axes, TABLE3_METRICS):
                # One colour per kernel in every row, whichever kernels a variant runs.
                color = f"C{THEOREM_KERNELS.index(kernel)}"
                axis.plot(n, [r[f"{metric}_mean"] for r in ours], marker="o", color=color, label=kernel.replace("_", " "))
                axis.fill_between(
                    n, [r[f"{metric}_ci_low"] for r in ours], [r[f"{metric}_ci_high"] for r in ours], color=color,
                    alpha=0.2,
                )
        labels = (f"{DISTANCE_NAME} distance to the posterior", "argmax agreement")
        for axis, index, label in zip(axes, (0, 1), labels):
            axis.plot(paper_n, [paper.TABLE3[n][index] for n in paper_n], "k--s", label="paper (Table 3)")
            axis.set_xscale("log", base=2)
            axis.set_xlabel("demonstrations n")
            axis.set_ylabel(label)
            axis.set_title(f"{name} ({v['construction']})", fontsize=9)
            axis.grid(alpha=0.3)
        axes[0].set_yscale("log")
        axes[1].set_ylim(0, 1.02)
    handles: dict[str, Any] = {}
    for axis in grid[:, 1]:  # every kernel of every variant, once
        for handle, label in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    figure.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    figure.suptitle("Kernel regression vs exact Bayesian posterior on random HMM mixtures, per construction")
    figure.tight_layout(rect=(0, 0.5 / (3.6 * len(variants)), 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)
