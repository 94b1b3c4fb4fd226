"""Readers of intermediate tables that several stages share: prompts joined with their extraction
shards, the head predictions of the reconstruction, the per-example tables (zero-shot results,
embeddings) and the one way to take the rows of given examples from those. Torch-free: the analyses
read these without loading a model.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from workflow_scripts.core import layers, table_io, tables
from workflow_scripts.core.kernels import ATTENTION_KERNELS, attention_weights

Value = TypeVar("Value")


class MissingExamplesError(ValueError):
    """A per-example table that lacks examples the prompts hold: it came from another split."""


def rows_for(table: Mapping[str, Value] | pd.Series, ids: Sequence[str], where: str) -> list[Value]:
    """The entries of `ids` in a per-example table (example id -> value, or a Series indexed by
    example id), in the order of `ids`; an error that names the table when one is missing."""
    missing = [i for i in ids if i not in table]
    if missing:
        raise MissingExamplesError(
            f"{where}: no row for examples {missing[:3]}; the table and the prompts come from different splits "
            "(re-run the rule that wrote it)"
        )
    return [table[i] for i in ids]


NEXT_TOKEN = ("next_ids", "next_probs", "next_rest")


def read_zero_shot(path: str | Path, hidden: bool = True, next_token: bool = False) -> pd.DataFrame:
    """The zero-shot table indexed by example_id; probs as arrays, hidden as (layers, size) arrays
    and the next-token top k as arrays (each left out when not needed: hidden is most of the file)."""
    names = [n for n in tables.ZERO_SHOT.names
             if (hidden or n not in ("hidden", "hidden_shape")) and (next_token or n not in NEXT_TOKEN)]
    table = table_io.read_table(path, tables.ZERO_SHOT, names).to_pandas()
    table["probs"] = table.probs.map(np.asarray)
    if next_token:
        table["next_ids"] = table.next_ids.map(np.asarray)
        table["next_probs"] = table.next_probs.map(np.asarray)
    if hidden:
        table["hidden"] = [np.asarray(h, dtype=np.float32).reshape(s) for h, s in zip(table.hidden, table.hidden_shape)]
    return table.set_index("example_id")


def read_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """Example id -> sentence embedding, from an EMBEDDINGS table."""
    table = table_io.read_table(path, tables.EMBEDDINGS).to_pydict()
    return {i: np.asarray(e, dtype=np.float32) for i, e in zip(table["example_id"], table["embedding"])}


def retrieval_space(setting: dict, path: str | Path | None) -> dict[str, np.ndarray] | None:
    """The vectors a retrieval setting ranks the pool by: encoder embeddings, or the studied model's
    hidden state at settings.*.hidden_layer of each input run alone (None for random selection)."""
    if setting["selection"] == "random":
        return None
    if setting["similarity"] == "encoder":
        return read_embeddings(path)
    hidden = read_zero_shot(path).hidden
    layer = layers.resolve(setting["hidden_layer"], hidden.iloc[0].shape[0], "settings.*.hidden_layer")
    return {i: h[layer] for i, h in hidden.items()}


# The shard columns iter_prompts reads: the attention rows without the keys, values, hidden states and
# head outputs that make up most of a shard.
ATTENTION_ROWS = ["prompt_id", "n_tokens", "n_layers", "n_heads", "prediction", "attention"]


def read_attention_rows(paths: list[str | Path]) -> pa.Table:
    """The shards of one prompt set, as much of them as iter_prompts needs."""
    return table_io.read_tables(paths, tables.SHARD, ATTENTION_ROWS)


def lacking_files(missing: set[int], shards: pa.Table) -> list[str]:
    """The shard files that should hold the missing prompt ids. Each file holds a run of consecutive
    prompts, so a file's own ids lie between its neighbours' last and first: a missing id there is
    its (in a gap between two files, either may have lost it; both are named)."""
    ids = shards.column("prompt_id").to_pylist()
    ranges, start = [], 0
    for path, rows in table_io.sources_of(shards):
        part = ids[start : start + rows]
        start += rows
        ranges.append((path, min(part, default=None), max(part, default=None)))
    lacking = []
    for i, (path, _, _) in enumerate(ranges):
        before = next((r[2] for r in reversed(ranges[:i]) if r[2] is not None), None)
        after = next((r[1] for r in ranges[i + 1 :] if r[1] is not None), None)
        lo = float("-inf") if before is None else before + 1
        hi = float("inf") if after is None else after - 1
        if any(lo <= m <= hi for m in missing):
            lacking.append(path)
    return lacking


def missing_rows_message(missing: set[int], shards: pa.Table) -> str:
    files = lacking_files(missing, shards)
    where = f" {' or '.join(files)} lacks them" if files else ""
    text = f"{len(missing)} prompts have no extraction row (e.g. prompt {min(missing)}):{where}."
    if not files:
        return text
    return (f"{text} Rebuild {'it' if len(files) == 1 else 'them'}, and what was computed from "
            f"{'it' if len(files) == 1 else 'them'}, with:\n    snakemake --cores 1 --forcerun {' '.join(files)}\n"
            "(add the study's --configfile / --profile options).")


def iter_prompts(prompts: pa.Table, shards: pa.Table) -> Iterator[dict]:
    """Join prompts with their extraction rows; yields the attention row as (layers, heads, tokens)."""
    by_id = {pid: i for i, pid in enumerate(shards.column("prompt_id").to_pylist())}
    missing = set(prompts.column("prompt_id").to_pylist()) - set(by_id)
    if missing:
        raise ValueError(missing_rows_message(missing, shards))
    meta = shards.select(["n_layers", "n_heads", "n_tokens", "prediction"]).to_pylist()
    attention = shards.column("attention")
    fields = ["prompt_id", "example_id", "label", "demo_ids", "demo_labels", "x_start", "y_pos", "query_start", "input_ids"]
    for row in prompts.select(fields).to_pylist():
        i = by_id[row["prompt_id"]]
        m = meta[i]
        if m["n_tokens"] != len(row["input_ids"]):
            raise ValueError(f"prompt {row['prompt_id']}: attention covers {m['n_tokens']} tokens, prompt has {len(row['input_ids'])}")
        values = attention[i].values.to_numpy(zero_copy_only=False).astype(np.float32)
        yield {**row, **m, "attention": values.reshape(m["n_layers"], m["n_heads"], m["n_tokens"])}


def kernel_weights(prompts: pa.Table, shards: pa.Table) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Every prompt's fields (without its attention row) and every kernel's weights (prompts, layers,
    heads, k), in prompt order: one pass over the attention rows serves the votes and the R^2."""
    rows: list[dict] = []
    weights: dict[str, list] = {name: [] for name in ATTENTION_KERNELS}
    for p in iter_prompts(prompts, shards):
        for name, w in attention_weights(p.pop("attention"), p["x_start"], p["y_pos"]).items():
            weights[name].append(w)
        rows.append(p)
    return rows, {name: np.stack(w) for name, w in weights.items()}


def prediction_grid(recon: pa.Table, kernel: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(prompt ids, gold labels, ICL predictions, head predictions (prompts, layers, heads)) of one kernel."""
    rows = recon.filter(pc.equal(recon.column("kernel"), kernel)).sort_by("prompt_id")
    n_layers, n_heads = rows.column("n_layers")[0].as_py(), rows.column("n_heads")[0].as_py()
    flat = rows.column("head_predictions").combine_chunks().values.to_numpy(zero_copy_only=False)
    return (
        rows.column("prompt_id").to_numpy(),
        rows.column("label").to_numpy(),
        rows.column("prediction").to_numpy(),
        flat.reshape(rows.num_rows, n_layers, n_heads),
    )
