"""Reading and writing the Parquet tables of core/tables.py: atomic writes, and reads that name the
file, what is wrong with it and the command that rebuilds it."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:  # a model job writes shards without importing polars (0.3 s of its start-up)
    import polars as pl


class TableError(ValueError):
    """An intermediate file that cannot be read as its stage's table; the message says how to rebuild it."""

# A file whose columns differ from its schema is most often a cache from before the schema grew (e.g.
# the zero-shot table's next-token columns), made before the study recorded its code (core/code.py)
# or kept with --rerun-triggers.
OLD_OR_EDITED = "It was written by an older version of the pipeline, or edited by hand."


def rebuild_hint(path: str | Path, cause: str = "It is damaged or was edited by hand.") -> str:
    return (f"{cause} Rebuild it, and what was computed from it, with:\n"
            f"    snakemake --cores 1 --forcerun {path}\n"
            "(add the study's --configfile / --profile options).")


def write_table(rows: pa.Table | pl.DataFrame | dict, schema: pa.Schema, path: str | Path) -> None:
    """Write rows under `schema`, atomically: the file appears complete or not at all."""
    if not isinstance(rows, (pa.Table, dict)):  # a polars DataFrame
        rows = rows.to_arrow()
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pydict(rows, schema=schema)
    table = table.select(schema.names).cast(schema)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A job killed while writing (SIGKILL skips the cleanup below) leaves its temporary file behind.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_columns(path: str | Path, found: pa.Schema, schema: pa.Schema) -> None:
    """That `found` (a file's schema, or the part of it read) carries every column of `schema` with its type."""
    missing = [f.name for f in schema if f.name not in found.names]
    if missing:
        raise TableError(
            f"{path}: missing columns {missing}; expected schema {schema.names}.\n{rebuild_hint(path, OLD_OR_EDITED)}"
        )
    wrong = [
        f"{f.name} is {found.field(f.name).type}, expected {f.type}"
        for f in schema
        if not found.field(f.name).type.equals(f.type)
    ]
    if wrong:
        raise TableError(f"{path}: {'; '.join(wrong)}.\n{rebuild_hint(path, OLD_OR_EDITED)}")


def part_of(schema: pa.Schema, columns: list[str] | None) -> pa.Schema:
    return schema if columns is None else pa.schema([schema.field(name) for name in columns])


def file_schema(path: str | Path) -> pa.Schema:
    """A Parquet file's schema, from its footer alone."""
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        if not Path(path).is_file():
            raise
        raise TableError(f"{path} cannot be read as a Parquet table ({exc}).\n{rebuild_hint(path)}") from exc


def checked(path: str | Path, schema: pa.Schema, columns: list[str] | None = None) -> str:
    """`path`, once its footer shows the columns and types the contract names (only `columns` of it,
    when given): what a lazy scan reads, checked before it reads anything."""
    check_columns(path, file_schema(path), part_of(schema, columns))
    return str(path)


def read_table(path: str | Path, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """Read a stage's file and check it carries the columns and types the contract names (only
    `columns` of it, when given: a shard's label logits without its attention rows)."""
    schema = part_of(schema, columns)
    try:
        # Columns asked for but absent are left to the missing-columns error below.
        present = pq.read_schema(path).names if columns is not None else None
        table = pq.read_table(path, columns=None if columns is None else [c for c in columns if c in present])
    except (pa.ArrowException, OSError) as exc:
        if not Path(path).is_file():
            raise
        raise TableError(f"{path} cannot be read as a Parquet table ({exc}).\n{rebuild_hint(path)}") from exc
    check_columns(path, table.schema, schema)
    return table.select(schema.names)


SOURCES = b"icl_sources"


def read_tables(paths: list[str | Path], schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """Read and concatenate several files of one schema (e.g. the shards of one prompt set). The
    table's metadata names each file and its row count (sources_of), so a reader that finds rows
    missing can say which file lacks them."""
    tables = [read_table(p, schema, columns) for p in paths]
    sources = json.dumps([[str(p), t.num_rows] for p, t in zip(paths, tables)]).encode()
    table = pa.concat_tables(tables)
    return table.replace_schema_metadata({**(table.schema.metadata or {}), SOURCES: sources})


def sources_of(table: pa.Table) -> list[tuple[str, int]]:
    """(file, rows) of each file read_tables concatenated into `table`, in order ([] if not read so)."""
    raw = (table.schema.metadata or {}).get(SOURCES)
    return [tuple(source) for source in json.loads(raw)] if raw else []

