"""The Parquet contract's reader and writer: atomic writes, and files that cannot be read get an
error that names them and the command that rebuilds them."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workflow_scripts.core import table_io

SCHEMA = pa.schema([("prompt_id", pa.int32()), ("text", pa.string())])
ROWS = {"prompt_id": [0, 1, 2], "text": ["a", "b", "c"]}


def test_round_trip(tmp_path):
    table_io.write_table(ROWS, SCHEMA, tmp_path / "t.parquet")
    assert table_io.read_table(tmp_path / "t.parquet", SCHEMA).to_pydict() == ROWS


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_file_names_itself_and_the_rebuild_command(tmp_path, damage):
    path = tmp_path / "results" / "001.parquet"
    table_io.write_table(ROWS, SCHEMA, path)
    data = path.read_bytes()
    path.write_bytes(b"not parquet at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(table_io.TableError) as err:
        table_io.read_table(path, SCHEMA)
    assert str(path) in str(err.value) and f"--forcerun {path}" in str(err.value)


def test_hand_edited_columns_name_the_file_and_the_rebuild_command(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"prompt_id": pa.array([0], pa.int64()), "other": ["x"]}), path)
    with pytest.raises(table_io.TableError, match=r"missing columns \['text'\]") as err:
        table_io.read_table(path, SCHEMA)
    assert f"--forcerun {path}" in str(err.value)
    pq.write_table(pa.table({"prompt_id": pa.array([0], pa.int64()), "text": ["x"]}), path)
    with pytest.raises(table_io.TableError, match="prompt_id is int64, expected int32"):
        table_io.read_table(path, SCHEMA)


def test_a_missing_file_is_not_called_damaged(tmp_path):
    with pytest.raises(FileNotFoundError):
        table_io.read_table(tmp_path / "none.parquet", SCHEMA)


def test_write_removes_what_a_killed_writer_left(tmp_path):
    path = tmp_path / "000.parquet"
    stale = tmp_path / ".000.parquet.k1ll3d.tmp"
    stale.write_bytes(b"half a parquet file")
    other = tmp_path / ".001.parquet.k1ll3d.tmp"  # another output's: not ours to remove
    other.write_bytes(b"x")
    table_io.write_table(ROWS, SCHEMA, path)
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".001.parquet.k1ll3d.tmp", "000.parquet"]
