"""Bad task data (issue 24): each case stops with a message that names the file or config key, the
counts and the fix, or warns where the run can go on."""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from workflow_scripts.core import split as sp
from workflow_scripts.core import table_io, tables
from workflow_scripts.core.config import ConfigError, setting_defaults, validate_config
from workflow_scripts.core.split import SplitError
from workflow_scripts.prompts import sets
from workflow_scripts.sources import data
from workflow_scripts.sources.data import DataError

TEMPLATE = {"prefix": "", "input": "{text}", "output": " {label}", "separator": "\n\n"}


def task_cfg(path: Path | None = None, **extra) -> dict:
    cfg = {
        "source": "local",
        "columns": {"text": "text", "label": "label"},
        "classes": ["negative", "positive"],
        "label_map": {"neg": "negative", "pos": "positive"},
        "template": TEMPLATE,
    }
    if path is not None:
        cfg["path"] = str(path)
    cfg.update(extra)
    return cfg


def prepare(tmp_path: Path, name: str, content: bytes, task: str = "toy", **extra) -> pl.DataFrame:
    src = tmp_path / name
    src.write_bytes(content)
    out = tmp_path / f"{task}.parquet"
    data.prepare_task(task, task_cfg(src, **extra), src, out)
    return pl.from_arrow(table_io.read_table(out, tables.TASK_DATA))


def csv_bytes(rows: list[tuple[str, str]]) -> bytes:
    return ("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows)).encode()


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- 1. a demonstration pool that shrinks -----------------------------------------------------

PROMPT_CFG = {"n_eval": 8, "n_dev": 0, "k": 4, "split_seed": 1, "max_chars": 0, "pool_size": 40, "prepend_bos": False}


def task_table(per_class: int) -> pl.DataFrame:
    n = 2 * per_class
    return pl.DataFrame({
        "example_id": [f"toy-{i}" for i in range(n)],
        "text": [f"review {i}" for i in range(n)],
        "text_b": [None] * n,
        "label": [i % 2 for i in range(n)],
        "label_name": ["negative" if i % 2 == 0 else "positive" for i in range(n)],
    }, schema_overrides={"text_b": pl.String, "label": pl.Int32})


def test_a_pool_smaller_than_pool_size_warns_with_the_counts_per_class(caplog):
    caplog.set_level(logging.WARNING)
    _, split = sp.task_split(task_table(6), task_cfg(), PROMPT_CFG, "toy")
    assert len(split.pool) == 4
    assert warnings_of(caplog) == [
        "task 'toy': prompts.pool_size=40 asks for a demonstration pool of 40 examples, but only 4 are left after "
        "the 8 test (prompts.n_eval) and 0 dev (prompts.n_dev) examples (per class, available of requested: "
        "negative 2 of 20, positive 2 of 20); prompts draw their demonstrations from these 4. Add examples to the "
        "task file, lower prompts.n_eval, or lower prompts.pool_size (0 takes every example left)"
    ]


def test_a_full_pool_does_not_warn(caplog):
    caplog.set_level(logging.WARNING)
    sp.task_split(task_table(30), task_cfg(), PROMPT_CFG, "toy")
    sp.task_split(task_table(6), task_cfg(), {**PROMPT_CFG, "pool_size": 0}, "toy")
    assert warnings_of(caplog) == []


def build(table: pl.DataFrame, setting: dict, prompt_cfg: dict = PROMPT_CFG) -> dict:
    # The pool check comes before any tokenization, so no tokenizer is needed to reach it.
    return sets.build_prompts(table, task_cfg("/data/toy.csv"), prompt_cfg, setting_defaults(setting), 0, None, "toy")


@pytest.mark.parametrize(
    "setting,expected",
    [
        (
            {"selection": "random"},
            "task 'toy': prompts.k=4 draws up to 2 demonstrations per class, but the pool holds 2 negative, 2 positive, "
            "so every prompt would show the same pool examples of class negative, positive: the 8 prompts "
            "(prompts.n_eval) would share (nearly) one demonstration set. The rule: each class needs more pool "
            "examples than k draws from it, here at least 3. The pool is what the task's 12 examples (6 negative, "
            "6 positive) leave after 8 test (prompts.n_eval) and 0 dev (prompts.n_dev) examples, capped at "
            "prompts.pool_size=40 (0: no cap). To fix it, add examples to tasks.toy.path '/data/toy.csv', or lower "
            "prompts.n_eval to 6 or fewer, or lower prompts.k to 2 or fewer",
        ),
        (
            {"selection": "similar", "balanced": False, "k": 4},
            "task 'toy': the setting's k=4 takes the top k of a pool of 4 examples, so every prompt would show the "
            "whole pool: the 8 prompts (prompts.n_eval) would share (nearly) one demonstration set. The rule: top-k "
            "retrieval needs a pool of more than k examples, here at least 5.",
        ),
    ],
)
def test_a_pool_that_leaves_the_draw_no_choice_stops(setting, expected):
    with pytest.raises(SplitError) as info:
        build(task_table(6), setting)
    assert str(info.value).startswith(expected)


def test_the_pool_rule_boundary_and_the_fixes_it_suggests():
    labels = np.repeat([0, 1], 7)
    split = sp.Split(eval=np.array([], int), dev=np.array([], int), pool=np.arange(14))
    cfg = {**PROMPT_CFG, "n_eval": 1, "pool_size": 0}
    # k=5 draws up to 3 of a class: a pool of 4 per class leaves a choice, 3 does not.
    sp.check_pool_choice(labels, split, ["negative", "positive"], 5, "prompts.k", True, "toy", "f", cfg)
    three = sp.Split(eval=split.eval, dev=split.dev, pool=np.array([0, 1, 2, 7, 8, 9]))
    with pytest.raises(SplitError, match="here at least 4"):
        sp.check_pool_choice(labels, three, ["negative", "positive"], 5, "prompts.k", True, "toy", "f", cfg)
    # Each fix the 12-row task's message suggests (n_eval 6, k 2) is enough on its own.
    table = task_table(6)
    for change in ({"n_eval": 6}, {"k": 2}):
        cfg = {**PROMPT_CFG, **change}
        _, split = sp.task_split(table, task_cfg(), cfg, "toy")
        sp.check_pool_choice(table["label"].to_numpy(), split, ["negative", "positive"], cfg["k"], "prompts.k", True, "toy", "f", cfg)


def test_a_pool_capped_by_pool_size_suggests_raising_it():
    with pytest.raises(SplitError) as info:
        build(task_table(30), {"selection": "random"}, {**PROMPT_CFG, "pool_size": 4})
    assert "raise prompts.pool_size to at least 6" in str(info.value)


# --- 2. bytes that are not valid in the encoding ----------------------------------------------

LATIN1 = csv_bytes([("caf\xe9 cr\xe8me good", "pos"), ("na\xefve plot", "neg"), ("plain", "neg")]).decode().encode("latin-1")


def test_undecodable_bytes_stop_with_the_count_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError) as info:
        prepare(tmp_path, "toy.csv", LATIN1)
    assert str(info.value) == (
        f"tasks.toy.path '{tmp_path / 'toy.csv'}': 3 undecodable byte sequences on 2 lines are not valid utf-8-sig "
        "(tasks.toy.encoding) and would become U+FFFD replacement characters, the first on line 2: "
        "b'caf\\xe9 cr\\xe8me good,pos'. If the file is in another encoding, name it: it decodes without errors as "
        "cp1252, so set tasks.toy.encoding: cp1252 (and check that the texts read right); if those bytes are not "
        "text in any encoding, set tasks.toy.encoding_errors: replace to read them as U+FFFD"
    )


def test_the_suggested_encoding_reads_the_texts_intact(tmp_path):
    out = prepare(tmp_path, "toy.csv", LATIN1, encoding="cp1252")
    assert out["text"].to_list() == ["caf\xe9 cr\xe8me good", "na\xefve plot", "plain"]


def test_encoding_errors_replace_reads_on_with_a_counted_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    out = prepare(tmp_path, "toy.csv", LATIN1, encoding_errors="replace")
    assert out["text"].to_list()[0] == "caf\ufffd cr\ufffdme good"
    [warning] = warnings_of(caplog)
    assert warning == (
        f"task toy: tasks.toy.path '{tmp_path / 'toy.csv'}': 3 undecodable byte sequences on 2 lines (not valid "
        "utf-8-sig) were replaced by U+FFFD (tasks.toy.encoding_errors: replace)"
    )


def test_a_replacement_character_already_in_the_file_is_not_counted():
    raw = "ok \ufffd\n".encode() + b"bad \xff\n"
    with pytest.raises(DataError, match="^f: 1 undecodable byte sequences on 1 lines"):
        data.decode_source(raw, "utf-8", "strict", "toy", "f")


def minimal_config(tmp_path: Path, **task_keys) -> dict:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (model / name).write_text("{}")
    (tmp_path / "toy.csv").write_bytes(csv_bytes([("good", "pos"), ("bad", "neg")]))
    return {
        "study": {"models": ["tiny"], "tasks": ["toy"], "seeds": [0]},
        "models": {"tiny": {"source": "local", "path": str(model)}},
        "tasks": {"toy": {**task_cfg(tmp_path / "toy.csv"), "template": {"input": "{text}"}, **task_keys}},
    }


def test_the_new_task_keys_validate_and_fill_no_default(tmp_path):
    config = validate_config(minimal_config(tmp_path, encoding_errors="replace", max_unmapped_share=0.2))
    assert config["tasks"]["toy"]["max_unmapped_share"] == 0.2
    plain = validate_config(minimal_config(tmp_path))["tasks"]["toy"]
    # No default is filled in: build_prompts and the extraction read the whole task entry as params.
    assert "encoding_errors" not in plain and "max_unmapped_share" not in plain


@pytest.mark.parametrize(
    "keys,expected",
    [
        ({"encoding": "latin-9x"}, "config key 'tasks.toy.encoding': 'latin-9x' is not a Python codec name"),
        ({"encoding_errors": "ignore"}, "config key 'tasks.toy.encoding_errors': 'ignore' is not one of ['strict', 'replace']"),
        ({"max_unmapped_share": 2}, "config key 'tasks.toy.max_unmapped_share': 2 is greater than the maximum of 1"),
    ],
)
def test_bad_values_of_the_data_keys_are_named(tmp_path, keys, expected):
    with pytest.raises(ConfigError) as info:
        validate_config(copy.deepcopy(minimal_config(tmp_path, **keys)))
    assert expected in str(info.value)


# --- 3. labels outside label_map --------------------------------------------------------------


def reviews(n_pos: int, n_neg: int, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(f"good {i}", "pos") for i in range(n_pos)] + [(f"bad {i}", "neg") for i in range(n_neg)] + extra


@pytest.mark.parametrize(
    "raw,hint",
    [
        ("Pos", "'Pos' differs from 'pos' only in case"),
        ("po s", None),
        ("POS", "'POS' differs from 'pos' only in case"),
    ],
)
def test_many_unmapped_labels_stop_with_counts_per_label_and_a_hint(tmp_path, raw, hint):
    rows = reviews(26, 32, [(f"fine {i}", raw) for i in range(6)])
    with pytest.raises(DataError) as info:
        prepare(tmp_path, "toy.csv", csv_bytes(rows))
    listed = f"{raw!r} 6" + (f" ({hint})" if hint else "")
    example = f"{raw!r}: positive" if hint else f"{raw!r}: <class>"
    assert str(info.value) == (
        f"tasks.toy.path '{tmp_path / 'toy.csv'}': task 'toy': 6 of 64 labelled rows (9.4%) have a raw label that is "
        f"not a key of tasks.toy.label_map: {listed}. tasks.toy.max_unmapped_share (unset: 0.01) lets at most 1.0% "
        f"of the labelled rows be dropped. Map these labels in tasks.toy.label_map (e.g. {example}), or, to leave "
        "these rows out, set tasks.toy.max_unmapped_share: 0.1"
    )


def test_a_label_map_key_with_stray_spaces_gets_a_spacing_hint():
    # Raw labels are stripped before they are looked up; a key with spaces inside never matches.
    df = pl.DataFrame({"text": ["a", "b", "c"], "label": ["very good", "neg", "very good"]})
    cfg = task_cfg(label_map={"neg": "negative", "very  good": "positive"})
    with pytest.raises(DataError, match=r"'very good' 2 \('very good' differs from 'very  good' only in spacing\)"):
        data.normalize(df, "toy", cfg)


def test_unmapped_labels_within_the_share_warn_with_counts(caplog):
    caplog.set_level(logging.WARNING)
    rows = reviews(100, 100, [("odd one", "Pos"), ("odd two", "?")])
    out = data.normalize(pl.DataFrame(rows, schema=["text", "label"], orient="row"), "toy", task_cfg())
    assert len(out) == 200
    assert warnings_of(caplog) == [
        "task toy: dropping 2 of 202 labelled rows (1.0%) whose raw label is not a key of tasks.toy.label_map "
        "(within tasks.toy.max_unmapped_share 0.01): 'Pos' 1 ('Pos' differs from 'pos' only in case), '?' 1"
    ]


def test_max_unmapped_share_allows_a_task_that_keeps_some_labels(caplog):
    caplog.set_level(logging.WARNING)
    rows = reviews(10, 10, [(f"so so {i}", "neutral") for i in range(10)])
    out = data.normalize(pl.DataFrame(rows, schema=["text", "label"], orient="row"), "toy", task_cfg(max_unmapped_share=0.34))
    assert len(out) == 20
    assert "dropping 10 of 30 labelled rows (33.3%)" in warnings_of(caplog)[0]


def test_rows_without_a_label_warn_but_do_not_count(caplog):
    caplog.set_level(logging.WARNING)
    df = pl.DataFrame({"text": ["a", "b", "c", "d"], "label": ["pos", "neg", None, None]})
    out = data.normalize(df, "toy", task_cfg())
    assert len(out) == 2
    assert warnings_of(caplog) == ["task toy: dropping 2 rows without a label (column 'label')"]


def test_many_labels_are_listed_by_count_and_cut_after_ten():
    extra = [(f"x{i}-{j}", f"L{i}") for i in range(12) for j in range(i + 1)]
    with pytest.raises(DataError) as info:
        data.normalize(pl.DataFrame(reviews(5, 5, extra), schema=["text", "label"], orient="row"), "toy", task_cfg())
    assert "'L11' 12, 'L10' 11," in str(info.value) and "and 2 more labels (3 rows)" in str(info.value)


# --- 4. malformed files -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "lines,expected",
    [
        (
            ['{"text": "good", "label": "pos"}', '{"text": "bad", "label": "neg"}', '{"text": "meh", "label": neg}'],
            "line 3 is not valid JSON (Expecting value at column 26: "
            "'{\"text\": \"meh\", \"label\": neg}'); a jsonl task file holds one JSON object per line, "
            "e.g. {\"text\": \"...\", \"label\": \"...\"}",
        ),
        (
            ['{"text": "good", "label": "pos"}', "", '["bad", "neg"]'],
            "line 3 is a JSON list, not an object ('[\"bad\", \"neg\"]'); a jsonl task file holds one JSON object "
            "per line (a .json file holding one array is not read)",
        ),
    ],
)
def test_malformed_jsonl_names_the_file_and_the_first_bad_line(tmp_path, lines, expected):
    with pytest.raises(DataError) as info:
        prepare(tmp_path, "toy.jsonl", "\n".join(lines).encode())
    assert str(info.value) == f"tasks.toy.path '{tmp_path / 'toy.jsonl'}': {expected}"


def test_good_jsonl_still_reads(tmp_path):
    lines = [json.dumps({"text": t, "label": label}) for t, label in reviews(2, 2, [])]
    out = prepare(tmp_path, "toy.jsonl", ("\n".join(lines) + "\n\n").encode())
    assert out["label"].to_list() == [1, 1, 0, 0]


@pytest.mark.parametrize(
    "content,extra,expected",
    [
        (
            b"text,label\ngood,pos\nbad, really,neg\nok,pos\n", {},
            "line 3 has 3 fields, more than the header row's 2 fields; quote fields that contain the separator ',', "
            "or give the header row a name for every field",
        ),
        (
            # Every row one field longer than the header: pandas would shift the columns by one without a word.
            b"text,label\ngood,pos,x\nbad,neg,y\n", {},
            "line 2 has 3 fields, more than the header row's 2 fields",
        ),
        (
            b"pos,good,2020\nneg,bad,2021\n", {"column_names": ["label", "text"]},
            "line 1 has 3 fields, more than the 2 names of tasks.toy.column_names; quote fields that contain the "
            "separator ',', or give tasks.toy.column_names a name for every field",
        ),
        (
            b'text,label\n"a quote\nspanning lines",pos\nbad,neg\nsome "x,y" here,pos,1\n', {},
            # A quote inside an unquoted field is a plain character, so "x,y" is two fields here.
            "line 5 has 4 fields, more than the header row's 2 fields",
        ),
        (
            b'text,label\ngood,pos\n"never closed,neg\nbad,neg\n', {},
            "the quoted field on line 3 is never closed (its opening \" runs to the end of the file)",
        ),
    ],
)
def test_malformed_csv_names_the_file_the_line_and_the_names(tmp_path, content, extra, expected):
    with pytest.raises(DataError) as info:
        prepare(tmp_path, "toy.csv", content, **extra)
    assert str(info.value).startswith(f"tasks.toy.path '{tmp_path / 'toy.csv'}': {expected}")


def test_a_malformed_tsv_names_its_separator(tmp_path):
    with pytest.raises(DataError, match=r"line 2 has 3 fields, .*separator '\\t'"):
        prepare(tmp_path, "toy.tsv", b"text\tlabel\ngood\tpos\tx\n")


def test_a_missing_column_names_the_file_and_the_key(tmp_path):
    with pytest.raises(DataError) as info:
        prepare(tmp_path, "toy.csv", b"sentence,label\ngood,pos\nbad,neg\n")
    assert str(info.value) == (
        f"tasks.toy.path '{tmp_path / 'toy.csv'}': task 'toy': config key 'tasks.toy.columns' names columns not in "
        "the data (text: 'text'); the data has ['sentence', 'label']"
    )


def test_a_registry_task_is_named_by_its_member_and_package(tmp_path):
    src = tmp_path / "source"
    src.write_bytes(b"text,label\ngood,pos,x\n")
    cfg = task_cfg(source="registry", package="pkg==1.0", member="pkg/data/reviews.csv", sha256="0" * 64)
    with pytest.raises(DataError) as info:
        data.prepare_task("toy", cfg, src, tmp_path / "out.parquet")
    assert str(info.value).startswith(
        f"{src} (tasks.toy.member 'pkg/data/reviews.csv' of tasks.toy.package 'pkg==1.0'): line 2 has 3 fields"
    )
