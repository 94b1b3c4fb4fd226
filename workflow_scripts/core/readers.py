"""Readers of intermediate tables that several stages share: prompts joined with their extraction
shards, the head predictions of the reconstruction, the per-example tables (zero-shot results,
embeddings) and the one way to take the rows of given examples from those. Torch-free: the analyses
read these without loading a model.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from workflow_scripts.core import layers, table_io, tables
from workflow_scripts.core.kernels import ATTENTION_KERNELS, attention_weights

Value = TypeVar("Value")


class MissingExamplesError(ValueError):
    """A per-example table that lacks examples the prompts hold: it came from another split."""


def rows_for(table: Mapping[str, Value], ids: Sequence[str], where: str) -> list[Value]:
    """The entries of `ids` in a per-example table (example id -> value), in the order of `ids`; an
    error that names the table when one is missing."""
    missing = [i for i in ids if i not in table]
    if missing:
        raise MissingExamplesError(
            f"{where}: no row for examples {missing[:3]}; the table and the prompts come from different splits "
            "(re-run the rule that wrote it)"
        )
    return [table[i] for i in ids]


NEXT_TOKEN = ("next_ids", "next_probs", "next_rest")


def list_arrays(column: pl.Series | pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """A list column as one numpy array per row, of the list's own value type (float16 stays float16)."""
    lists = column.to_arrow() if isinstance(column, pl.Series) else column
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    flat = lists.flatten().to_numpy(zero_copy_only=False)
    if isinstance(lists, pa.FixedSizeListArray):
        return list(flat.reshape(len(lists), lists.type.list_size))
    offsets = lists.offsets.to_numpy()
    # flatten() starts at the array's own offset, so the bounds are taken relative to it.
    return [flat[a:b] for a, b in zip(offsets[:-1] - offsets[0], offsets[1:] - offsets[0])]


def read_zero_shot(path: str | Path, hidden: bool = True, next_token: bool = False) -> pl.DataFrame:
    """The zero-shot table, with hidden and the next-token top k left out when not needed (hidden is
    most of the file). by_example and hidden_states map its rows by example id."""
    names = [n for n in tables.ZERO_SHOT.names
             if (hidden or n not in ("hidden", "hidden_shape")) and (next_token or n not in NEXT_TOKEN)]
    return pl.scan_parquet(table_io.checked(path, tables.ZERO_SHOT, names)).select(names).collect()


def by_example(frame: pl.DataFrame, column: str) -> dict[str, object]:
    """Example id -> the row's value of `column` (a list column's values as a numpy array)."""
    series = frame[column]
    values = list_arrays(series) if isinstance(series.dtype, (pl.List, pl.Array)) else series.to_list()
    return dict(zip(frame["example_id"].to_list(), values))


def hidden_states(frame: pl.DataFrame) -> dict[str, np.ndarray]:
    """Example id -> its hidden states (layers, size) as float32, from a zero-shot table read with hidden."""
    shapes = frame["hidden_shape"].to_list()
    return {i: h.astype(np.float32).reshape(s)
            for i, h, s in zip(frame["example_id"].to_list(), list_arrays(frame["hidden"]), shapes)}


def read_task_data(path: str | Path) -> pl.DataFrame:
    """A task's normalized examples (TASK_DATA)."""
    return pl.from_arrow(table_io.read_table(path, tables.TASK_DATA))


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
    hidden = hidden_states(read_zero_shot(path))
    layer = layers.resolve(setting["hidden_layer"], next(iter(hidden.values())).shape[0], "settings.*.hidden_layer")
    return {i: h[layer] for i, h in hidden.items()}


# The shard columns iter_prompts reads: the attention rows without the keys, values, hidden states and
# head outputs that make up most of a shard.
ATTENTION_ROWS = ["prompt_id", "n_tokens", "n_layers", "n_heads", "prediction", "attention"]


@dataclass(frozen=True)
class Shards:
    """A prompt set's extraction shards, read lazily: each part's prompt ids are known up front, its
    other columns are read only when a prompt needs them, one part at a time. A part is a shard file,
    or (read_tables' concatenation, a test's table) a slice of a table already in memory."""

    paths: tuple[str | None, ...]
    ids: tuple[tuple[int, ...], ...]
    columns: tuple[str, ...]
    loaded: tuple[pa.Table, ...] | None = None

    def read(self, part: int, prompt_ids: set[int]) -> pl.DataFrame:
        if self.loaded is not None:
            return pl.from_arrow(self.loaded[part].select(list(self.columns)))
        scan = pl.scan_parquet(self.paths[part]).select(self.columns)
        if len(prompt_ids) < len(self.ids[part]):
            # Pushed down into the Parquet reader: the attention rows of other prompts are not decoded.
            scan = scan.filter(pl.col("prompt_id").is_in(sorted(prompt_ids)))
        return scan.collect()


def scan_shards(paths: Sequence[str | Path], columns: Sequence[str] = ATTENTION_ROWS) -> Shards:
    """The shards of one prompt set, checked against the contract from their footers, with only their
    prompt ids read: one small column of each."""
    files = [table_io.checked(p, tables.SHARD, list(columns)) for p in paths]
    ids = tuple(tuple(pl.scan_parquet(f).select("prompt_id").collect()["prompt_id"].to_list()) for f in files)
    return Shards(tuple(files), ids, tuple(columns))


def shards_in_memory(table: pa.Table) -> Shards:
    """A shard table read whole, one part per file read_tables concatenated (one unnamed part otherwise)."""
    sources = table_io.sources_of(table) or [(None, table.num_rows)]
    starts = np.cumsum([0] + [rows for _, rows in sources])
    parts = tuple(table.slice(start, rows) for start, (_, rows) in zip(starts, sources))
    ids = tuple(tuple(part.column("prompt_id").to_pylist()) for part in parts)
    return Shards(tuple(path for path, _ in sources), ids, tuple(table.schema.names), parts)


def read_attention_rows(paths: Sequence[str | Path]) -> Shards:
    """The shards of one prompt set, as much of them as iter_prompts needs."""
    return scan_shards(paths, ATTENTION_ROWS)


def lacking_files(missing: set[int], shards: Shards) -> list[str]:
    """The shard files that should hold the missing prompt ids. Each file holds a run of consecutive
    prompts, so a file's own ids lie between its neighbours' last and first: a missing id there is
    its (in a gap between two files, either may have lost it; both are named)."""
    ranges = [(path, min(ids, default=None), max(ids, default=None)) for path, ids in zip(shards.paths, shards.ids)]
    lacking = []
    for i, (path, _, _) in enumerate(ranges):
        before = next((r[2] for r in reversed(ranges[:i]) if r[2] is not None), None)
        after = next((r[1] for r in ranges[i + 1 :] if r[1] is not None), None)
        lo = float("-inf") if before is None else before + 1
        hi = float("inf") if after is None else after - 1
        if path is not None and any(lo <= m <= hi for m in missing):
            lacking.append(path)
    return lacking


def missing_rows_message(missing: set[int], shards: Shards) -> str:
    files = lacking_files(missing, shards)
    where = f" {' or '.join(files)} lacks them" if files else ""
    text = f"{len(missing)} prompts have no extraction row (e.g. prompt {min(missing)}):{where}."
    if not files:
        return text
    return (f"{text} Rebuild {'it' if len(files) == 1 else 'them'}, and what was computed from "
            f"{'it' if len(files) == 1 else 'them'}, with:\n    snakemake --cores 1 --forcerun {' '.join(files)}\n"
            "(add the study's --configfile / --profile options).")


SHARD_FIELDS = ["n_layers", "n_heads", "n_tokens", "prediction"]


def attention_rows(frame: pl.DataFrame) -> dict[int, tuple[dict, np.ndarray]]:
    """Prompt id -> (its row's sizes and prediction, its flat attention row as float32)."""
    meta = frame.select(SHARD_FIELDS).to_dicts()
    attention = list_arrays(frame["attention"])
    return {pid: (m, a.astype(np.float32)) for pid, m, a in zip(frame["prompt_id"].to_list(), meta, attention)}


def iter_prompts(prompts: pa.Table, shards: Shards | pa.Table) -> Iterator[dict]:
    """Join prompts with their extraction rows; yields the attention row as (layers, heads, tokens).
    Only the rows of `prompts` are read, one shard at a time: extraction writes runs of consecutive
    prompts, so a prompt set read in its own order reads each shard once."""
    if isinstance(shards, pa.Table):
        shards = shards_in_memory(shards)
    part_of = {pid: part for part, ids in enumerate(shards.ids) for pid in ids}
    fields = ["prompt_id", "example_id", "label", "demo_ids", "demo_labels", "x_start", "y_pos", "query_start", "input_ids"]
    missing = set(prompts.column("prompt_id").to_pylist()) - set(part_of)
    if missing:
        raise ValueError(missing_rows_message(missing, shards))
    rows = prompts.select(fields).to_pylist()
    wanted: dict[int, set[int]] = {}
    for row in rows:
        wanted.setdefault(part_of[row["prompt_id"]], set()).add(row["prompt_id"])
    current, read = None, {}
    for row in rows:
        part = part_of[row["prompt_id"]]
        if part != current:
            current, read = part, attention_rows(shards.read(part, wanted[part]))
        m, values = read[row["prompt_id"]]
        if m["n_tokens"] != len(row["input_ids"]):
            raise ValueError(f"prompt {row['prompt_id']}: attention covers {m['n_tokens']} tokens, prompt has {len(row['input_ids'])}")
        yield {**row, **m, "attention": values.reshape(m["n_layers"], m["n_heads"], m["n_tokens"])}


def kernel_weights(prompts: pa.Table, shards: Shards | pa.Table) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Every prompt's fields (without its attention row, with its last token's attention on position 0
    as `sink`, (layers, heads)) and every kernel's weights (prompts, layers, heads, k), in prompt order:
    one pass over the attention rows serves the votes, the R^2 and the sink."""
    rows: list[dict] = []
    weights: dict[str, list] = {name: [] for name in ATTENTION_KERNELS}
    for p in iter_prompts(prompts, shards):
        attention = p.pop("attention")
        for name, w in attention_weights(attention, p["x_start"], p["y_pos"]).items():
            weights[name].append(w)
        rows.append({**p, "sink": attention[..., 0].astype(np.float64)})
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
