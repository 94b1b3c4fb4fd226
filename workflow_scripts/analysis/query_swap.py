"""Stage: the query-swap comparison of one prompt set (query_dependence.py): the same demonstrations
with another held-out query, per head how far its kernel weights move and how often its vote changes."""
from __future__ import annotations

from pathlib import Path

from workflow_scripts.analysis.query_dependence import swap_table
from workflow_scripts.core import table_io, tables
from workflow_scripts.core.readers import kernel_weights, read_attention_rows


def weights_of(prompts_path: str | Path, shard_paths: list[str]):
    return kernel_weights(table_io.read_table(prompts_path, tables.PROMPTS), read_attention_rows(shard_paths))


def write_query_swap(
    prompts_path: str | Path, shard_paths: list[str], swap_prompts_path: str | Path, swap_shard_paths: list[str],
    n_classes: int, out: str | Path,
) -> None:
    table = swap_table(weights_of(prompts_path, shard_paths), weights_of(swap_prompts_path, swap_shard_paths), n_classes)
    table_io.write_table(table, tables.QUERY_SWAP, out)


def from_snakemake(smk) -> None:
    write_query_swap(
        smk.input.prompts, list(smk.input.shards), smk.input.swap_prompts, list(smk.input.swap_shards),
        smk.params.n_classes, smk.output[0],
    )
