"""Section 5.1 / Fig. 2: where the last token's attention goes, averaged over prompts.

Demonstration inputs differ in length, so each x_i (and the query) is resampled to a fixed number
of columns by linear interpolation; label tokens keep one column each and separators keep their
own columns, so every prompt of a set maps onto the same aligned axis.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from workflow_scripts.core import table_io, tables
from workflow_scripts.core.readers import iter_prompts, read_attention_rows


def resample(values: np.ndarray, n_cols: int) -> np.ndarray:
    """Linear interpolation of the last axis onto n_cols evenly spaced points (NaN for an empty span)."""
    n = values.shape[-1]
    if n == 0:
        return np.full(values.shape[:-1] + (n_cols,), np.nan)
    if n == 1:
        return np.repeat(values, n_cols, axis=-1)
    grid = np.linspace(0, n - 1, n_cols)
    left = np.floor(grid).astype(int).clip(max=n - 2)
    frac = grid - left
    return values[..., left] * (1 - frac) + values[..., left + 1] * frac


def segments(prompt: dict) -> list[tuple[str, int, int]]:
    """(name, start, end) token spans in prompt order: prefix, then x_i, y_i, sep_i per demo, query."""
    spans = [("prefix", 0, prompt["x_start"][0])]
    nexts = list(prompt["x_start"][1:]) + [prompt["query_start"]]
    for i, (xs, y, nxt) in enumerate(zip(prompt["x_start"], prompt["y_pos"], nexts)):
        spans += [(f"x{i + 1}", xs, y), (f"y{i + 1}", y, y + 1), (f"sep{i + 1}", y + 1, nxt)]
    spans.append(("query", prompt["query_start"], prompt["n_tokens"]))
    return spans


def column_layout(first: dict, resample_length: int) -> list[tuple[str, int]]:
    """(segment, width) of the aligned axis: inputs and query resampled, the rest as in the first prompt."""
    return [
        (name, resample_length if name[0] == "x" or name == "query" else end - start)
        for name, start, end in segments(first)
    ]


def align(prompt: dict, layout: list[tuple[str, int]]) -> np.ndarray:
    """The prompt's attention (layers, heads, T) on the aligned axis (layers, heads, columns)."""
    att = prompt["attention"]
    parts = [resample(att[..., start:end], width) for (_, start, end), (_, width) in zip(segments(prompt), layout)]
    return np.concatenate(parts, axis=-1)


def average_map(prompts: pa.Table, shards: pa.Table, resample_length: int) -> tuple[np.ndarray, list[str]]:
    """Mean aligned attention over prompts (NaN-aware for empty spans) and the segment of each column."""
    total = count = layout = None
    for prompt in iter_prompts(prompts, shards):
        if layout is None:
            layout = column_layout(prompt, resample_length)
        aligned = align(prompt, layout)
        valid = ~np.isnan(aligned)
        total = np.where(valid, aligned, 0) + (0 if total is None else total)
        count = valid.astype(int) + (0 if count is None else count)
    with np.errstate(invalid="ignore"):
        mean = total / count
    return mean, [name for name, width in layout for _ in range(width)]


def label_mass(prompts: pa.Table, shards: pa.Table) -> dict[str, list]:
    """Per layer, the last token's attention on the label tokens (mean over heads and prompts) against
    the label tokens' share of positions: a ratio above 1 means label tokens draw more than uniform."""
    mass, share = [], []
    for prompt in iter_prompts(prompts, shards):
        y = np.asarray(prompt["y_pos"])
        att = prompt["attention"]
        # rows are renormalized: float16 storage leaves them summing to 1 only within ~1e-3
        mass.append((att[..., y].sum(axis=-1) / att.sum(axis=-1)).mean(axis=-1))
        share.append(len(y) / prompt["n_tokens"])
    mean_mass, mean_share = np.mean(mass, axis=0), float(np.mean(share))
    return {
        "layer": list(range(len(mean_mass))),
        "label_mass": mean_mass.tolist(),
        "label_share": [mean_share] * len(mean_mass),
        "ratio": (mean_mass / mean_share).tolist(),
    }


def write_map(
    prompts_path: str | Path, shard_paths: list[str], resample_length: int, out: str | Path, mass_out: str | Path
) -> None:
    prompts = table_io.read_table(prompts_path, tables.PROMPTS)
    shards = read_attention_rows(shard_paths)
    table_io.write_table(label_mass(prompts, shards), tables.LABEL_MASS, mass_out)
    mean, names = average_map(prompts, shards, resample_length)
    n_layers, n_heads, n_cols = mean.shape
    layer, head, column = np.meshgrid(np.arange(n_layers), np.arange(n_heads), np.arange(n_cols), indexing="ij")
    table_io.write_table(
        {
            "layer": layer.ravel(),
            "head": head.ravel(),
            "column": column.ravel(),
            "segment": np.tile(names, n_layers * n_heads),
            "attention": mean.ravel().astype(np.float32),
        },
        tables.ATTENTION_MAP,
        out,
    )


def from_snakemake(smk) -> None:
    write_map(smk.input.prompts, list(smk.input.shards), smk.params.resample_length, smk.output.map, smk.output.label_mass)
