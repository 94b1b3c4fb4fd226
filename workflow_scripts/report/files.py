"""What every report rule writes: its table twice, as CSV for other tools and as a small self-contained
HTML page with a sortable table (Snakemake's HTML report shows HTML inline but offers a CSV only as a
download), and its piece of results/report.md, which the `report` rule concatenates."""
from __future__ import annotations

import csv
import html
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from workflow_scripts.core import paths
from workflow_scripts.report.frames import as_held


@dataclass(frozen=True)
class Outputs:
    """A report rule's files: its table (CSV and HTML page), its piece of results/report.md and the
    figure it draws (None where the figure comes from another rule)."""

    csv: str
    html: str
    piece: str
    figure: str | None = None


def outputs_of(smk) -> Outputs:
    return Outputs(smk.output.csv, smk.output.html, smk.output.piece, smk.output.get("figure"))


def write_piece(path: str | Path, lines: list[str]) -> None:
    """A piece of results/report.md; read_piece gives `lines` back."""
    Path(path).write_text("\n".join(lines) + "\n")


def read_piece(path: str | Path) -> list[str]:
    return Path(path).read_text().splitlines()


def link(path: str | Path) -> str:
    """`path` as results/report.md links it (both relative to the working directory)."""
    return os.path.relpath(path, Path(paths.report()).parent)

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1rem; color: #1e293b; }
h1 { font-size: 1.1rem; margin: 0 0 .5rem; }
p { max-width: 60rem; margin: .3rem 0; }
table { border-collapse: collapse; margin: .8rem 0; }
th, td { padding: .25rem .6rem; border-bottom: 1px solid #e2e8f0; text-align: left; white-space: nowrap; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f1f5f9; cursor: pointer; position: sticky; top: 0; }
th[data-order="ascending"]::after { content: " \\25B2"; }
th[data-order="descending"]::after { content: " \\25BC"; }
tr:hover td { background: #f8fafc; }
.hint { color: #64748b; font-size: 12px; }
"""

# Click a header to sort by it (again to reverse); numbers sort as numbers, empty cells last.
SCRIPT = """
document.querySelectorAll("th").forEach((th, column) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const rows = Array.from(body.rows);
  const key = row => row.cells[column].dataset.value;
  const numeric = rows.every(row => key(row) === "" || !isNaN(Number(key(row))));
  const order = th.dataset.order === "ascending" ? "descending" : "ascending";
  const sign = order === "ascending" ? 1 : -1;
  const compare = (a, b) => {
    if (a === "" || b === "") return (a === "") - (b === "");
    return sign * (numeric ? Number(a) - Number(b) : a.localeCompare(b));
  };
  rows.sort((a, b) => compare(key(a), key(b)));
  th.parentElement.querySelectorAll("th").forEach(other => delete other.dataset.order);
  th.dataset.order = order;
  body.append(...rows);
}));
"""


def cell(value) -> str:
    """One <td>: numbers right-aligned (3 decimals), each cell's exact value kept for sorting."""
    if value is None or isinstance(value, float) and math.isnan(value):
        return '<td data-value=""></td>'
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return f'<td class="number" data-value="{int(value)}">{int(value)}</td>'
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return f'<td class="number" data-value="{float(value)}">{float(value):.3f}</td>'
    text = html.escape(str(value))
    return f'<td data-value="{text}">{text}</td>'


def csv_texts(column: pl.Series) -> list[str]:
    """A column's CSV fields: floats in their shortest round-trip form (float32 as float32), missing
    values (null or NaN) empty, booleans True / False."""
    if column.dtype == pl.Float32:
        return ["" if v is None or math.isnan(v) else str(np.float32(v)) for v in column.to_list()]
    if column.dtype.is_float():
        return ["" if v is None or math.isnan(v) else repr(v) for v in column.to_list()]
    return ["" if v is None else str(v) for v in column.to_list()]


def write_csv(frame: pl.DataFrame, path: str | Path) -> None:
    """`frame` as CSV: a header, fields quoted only where they hold a comma, quote or line break."""
    frame = as_held(frame)
    with Path(path).open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(frame.columns)
        writer.writerows(zip(*(csv_texts(frame[c]) for c in frame.columns)))


def table_html(frame: pl.DataFrame, title: str, notes: list[str] = ()) -> str:
    """A standalone HTML page: title, notes (plain text, one paragraph each) and the sortable table."""
    header = "".join(f"<th>{html.escape(str(c).replace('_', ' '))}</th>" for c in frame.columns)
    rows = "\n".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in as_held(frame).iter_rows())
    paragraphs = "".join(f"<p>{html.escape(note)}</p>" for note in notes)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>{paragraphs}\n"
        f"<table><thead><tr>{header}</tr></thead><tbody>\n{rows}\n</tbody></table>\n"
        '<p class="hint">Click a column header to sort.</p>\n'
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def write_table(frame: pl.DataFrame, out: Outputs, title: str, notes: list[str] = ()) -> None:
    Path(out.csv).parent.mkdir(parents=True, exist_ok=True)
    write_csv(frame, out.csv)
    Path(out.html).write_text(table_html(frame, title, notes))
