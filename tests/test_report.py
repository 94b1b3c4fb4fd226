"""The report's pure pieces: tables as CSV and sortable HTML, report.md pieces, the best-heads table,
Table 2 with the paper's numbers, and the assembly order of results/report.md."""
from __future__ import annotations

import csv

import numpy as np
import polars as pl

from workflow_scripts.core import aggregate
from workflow_scripts.report import assemble, frames, head_tables, similarity, theory
from workflow_scripts.report import files as report_files
from workflow_scripts.report import table2 as table2_report
from workflow_scripts.report.files import Outputs


def test_table_cells_keep_exact_values_for_sorting_and_escape_text():
    assert report_files.cell(np.int64(3)) == '<td class="number" data-value="3">3</td>'
    assert report_files.cell(np.float64(0.12345)) == '<td class="number" data-value="0.12345">0.123</td>'
    assert report_files.cell(float("nan")) == '<td data-value=""></td>'
    assert report_files.cell("a<b") == '<td data-value="a&lt;b">a&lt;b</td>'


def test_table_is_written_as_csv_and_a_standalone_sortable_page(tmp_path):
    out = Outputs(csv=str(tmp_path / "t.csv"), html=str(tmp_path / "t.html"), piece=str(tmp_path / "t.md"))
    frame = pl.DataFrame({"kernel": ["max", "label"], "agreement_sd": [0.1, float("nan")]})
    report_files.write_table(frame, out, "A & B", ["one note"])
    assert next(csv.reader((tmp_path / "t.csv").read_text().splitlines())) == ["kernel", "agreement_sd"]
    page = (tmp_path / "t.html").read_text()
    assert "<th>agreement sd</th>" in page and "<h1>A &amp; B</h1>" in page and "<p>one note</p>" in page
    assert "addEventListener" in page and "http" not in page  # sorts offline


def test_csv_fields_read_back_exactly_and_quote_only_where_needed(tmp_path):
    out = Outputs(csv=str(tmp_path / "t.csv"), html=str(tmp_path / "t.html"), piece=str(tmp_path / "t.md"))
    frame = pl.DataFrame({"text": ["a,b", 'say "hi"', None], "x": [0.1, float("nan"), 1e-05], "n": [3, None, 5],
                          "ok": [True, False, None], "f32": pl.Series([0.1, 0.25, None], dtype=pl.Float32)})
    report_files.write_table(frame, out, "t")
    # shortest round-trip floats (float32 as float32), missing values empty, an integer column with a
    # missing value as floats
    assert (tmp_path / "t.csv").read_text() == ('text,x,n,ok,f32\n"a,b",0.1,3.0,True,0.1\n"say ""hi""",,,False,0.25\n'
                                                ',1e-05,5.0,,\n')
    page = (tmp_path / "t.html").read_text()
    assert '<td class="number" data-value="3.0">3.000</td>' in page and "<td data-value=\"True\">True</td>" in page


def test_a_piece_reads_back_as_the_lines_written(tmp_path):
    lines = ["### title", "", "| a | b |", ""]
    report_files.write_piece(tmp_path / "p.md", lines)
    assert report_files.read_piece(tmp_path / "p.md") == lines


def heads_frame() -> pl.DataFrame:
    """Two seeds of a 2-layer x 2-head model; L1 H0 is best for every kernel, L0 H1 second."""
    score = {(0, 0): 0.2, (0, 1): 0.6, (1, 0): 0.9, (1, 1): 0.4}
    return pl.DataFrame([
        {"layer": l, "head": h, "kernel": k, "agreement": a + 0.01 * seed, "accuracy": 0.5}
        for seed in (0, 1) for k in ("max", "label", "mean") for (l, h), a in score.items()
    ])


def test_top_heads_lists_the_best_heads_per_kernel_with_sd_over_seeds():
    table = head_tables.top_heads(heads_frame(), 0.5)
    assert {k: table["kernel"].to_list().count(k) for k in set(table["kernel"])} == {"label": 2, "max": 2, "mean": 2}
    best = table.filter(pl.col("kernel") == "max")
    assert best.select("rank", "layer", "head", "depth").rows() == [(1, 1, 0, 1.0), (2, 0, 1, 0.0)]
    assert np.isclose(best["agreement"][0], 0.905) and np.isclose(best["agreement_sd"][0], 0.01 / np.sqrt(2))


def test_table2_rows_carry_the_papers_number_for_the_same_task():
    table = pl.DataFrame({
        "method": ["icl", "null", "head_max"], "metric": ["accuracy", "agreement", "agreement"],
        "mean": [0.6, 0.5, 0.7], "sd": [0.01, 0.02, 0.03], "ci_low": [0.5, 0.4, 0.6], "ci_high": [0.7, 0.6, 0.8],
        "seeds_ci_low": [0.45, 0.35, 0.5], "seeds_ci_high": [0.75, 0.65, 0.9], "n_seeds": [2] * 3, "n_heldout": [10] * 3, "choices": [None, None, "L1 H0 (every seed)"],
        "reference": [""] * 3, "same_as": [""] * 3,
    })
    frame = table2_report.table2_frame(table, "rotten_tomatoes")
    assert frame["paper_gptj"][0] == 0.671 and np.isnan(frame["paper_gptj"][1]) and frame["paper_gptj"][2] == 0.683
    assert np.isnan(table2_report.table2_frame(table, "toy")["paper_gptj"].to_numpy()).all()
    assert frame["seeds_ci_high"].to_list() == [0.75, 0.65, 0.9]
    lines = "\n".join(table2_report.table2_lines(table, "rotten_tomatoes", "enc"))
    assert "0.700 ± 0.030 [0.600, 0.800; seeds 0.500, 0.900]" in lines
    assert "Degenerate ICL" not in lines  # the null baseline agrees on 50%
    constant = table.with_columns(mean=pl.Series([0.6, 0.97, 0.97]))
    assert "**Degenerate ICL:** the model gives its most frequent answer on 97% of held-out prompts" in "\n".join(
        table2_report.table2_lines(constant, "rotten_tomatoes", "enc"))


def test_report_md_puts_table_2_first_then_each_set_then_ablations_causal_check_and_theory():
    study = {"models": ["m"], "tasks": ["t"], "seeds": [0, 1], "settings": ["random"], "n_eval": 8, "k": 4,
             "n_select": 4, "n_heldout": 4, "prepend_bos": True}
    summaries = [pl.DataFrame({"n_prompts": [8], "icl_accuracy": [a], "null_agreement": [0.5], "null_accuracy": [0.5],
                               "recency_agreement": [0.7], "uniform_agreement": [0.5], "uniform_tie_rate": [1.0],
                               "positional_agreement": [0.75], "slot_label_agreement": [0.8]})
                 for a in (0.6, 0.8)]
    text = assemble.assemble("Title", study, [["### m / t / random", ""]],
                             [("m / t / random", summaries, [["5.1 piece"], [assemble.PROBES_OFF, ""]])],
                             ["## Section 4.2 ablations: m"], ["## Causal check"], ["## Theorem 1"])
    order = ["# Title", "BOS token (prompts.prepend_bos)", "## Table 2", "### m / t / random", "## m / t / random", "ICL accuracy 0.700 ± 0.141",
             "5.1 piece", "Probes are off", "## Section 4.2 ablations: m", "## Causal check", "## Theorem 1"]
    positions = [text.index(part) for part in order]
    assert positions == sorted(positions) and text.endswith("## Theorem 1\n")


def test_theory_frame_keeps_each_variant_and_only_the_pooled_rows():
    from workflow_scripts.core import tables

    values = {name: [0.5, 0.5, 0.5] for name in tables.THEORY.names}
    table = pl.DataFrame(values | {"variant": ["shared", "block", "block"], "kernel": ["constant"] * 3,
                                   "n_demos": [1, 1, 1], "hmm_seed": [None, None, 2]})
    frame = theory.theory_frame(table)
    assert frame.columns[0] == "variant" and frame["variant"].to_list() == ["shared", "block"]


def test_the_53_verdict_names_the_reading_that_tracks_fig_3_or_says_neither_does():
    def table(label_words: float, next_token: float) -> pl.DataFrame:
        return pl.DataFrame([
            {"similarity": s, "kernel": k, "layer": 1, "head": 0, "pearson": 0.1, "share_positive": 0.5,
             "corr_with_agreement": {"label_words": label_words, "next_token": next_token}[s] if k == "max" else 0.9}
            for s in similarity.SIMILARITY_TEXT for k in ("max", "label")
        ])

    text = "\n".join(similarity.similarity_lines(table(-0.1, 0.4), 100, 0.001, "f.png"))
    assert "the next token reading tracks Fig. 3 more closely (next token 0.400, label words -0.100)" in text
    text = "\n".join(similarity.similarity_lines(table(-0.1, -0.3), 100, 0.001, "f.png"))
    assert "neither reading tracks Fig. 3 (label words -0.100, next token -0.300)" in text
    assert "within 0.001 of the full-vocabulary one" in text


def kahan_mean(values: list[float]) -> float:
    total = compensation = 0.0
    for value in values:
        y = value - compensation
        t = total + y
        compensation = (t - total) - y
        total = t
    return total / len(values)


def test_group_means_sum_as_the_report_always_did_to_the_last_bit():
    rng = np.random.default_rng(3)
    values = rng.uniform(0, 1, 60)
    groups = rng.integers(0, 3, 60)
    frame = pl.DataFrame({"g": groups, "x": values})
    # rows out of group order: a compensated sum in row order, per group (keys sorted)
    means = aggregate.group_stats(frame, ["g"], ["x"])
    assert means["g"].to_list() == [0, 1, 2]
    assert means["x"].to_list() == [kahan_mean([v for v, g in zip(values, groups) if g == k]) for k in (0, 1, 2)]
    # rows in group order, nothing missing: each group's first value plus numpy's sum of the rest
    ordered = frame.sort("g", maintain_order=True)
    per_group = [ordered.filter(pl.col("g") == k)["x"].to_numpy() for k in (0, 1, 2)]
    assert aggregate.group_stats(ordered, ["g"], ["x"])["x"].to_list() == [(v[0] + np.add.reduce(v[1:])) / len(v) for v in per_group]
    # a missing value is skipped, and sends the whole block through the compensated sum
    holed = ordered.with_columns(y=pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col("x")))
    both = aggregate.group_stats(holed, ["g"], ["x", "y"], blocks=[["x", "y"]])
    assert both["x"].to_list() == [kahan_mean(list(v)) for v in per_group]
    assert both["y"][0] == kahan_mean(list(per_group[0][1:]))
    # sds: Welford's running variance, ddof 1, missing for a single value
    sd = aggregate.group_stats(pl.DataFrame({"g": [0, 0, 0, 1], "x": [0.1, 0.7, 0.2, 0.5]}), ["g"], [], sds=["x"])["x_sd"]
    mean, squares = 0.0, 0.0
    for n, v in enumerate([0.1, 0.7, 0.2], 1):
        old = mean
        mean += (v - old) / n
        squares += (v - mean) * (v - old)
    assert sd.to_list() == [np.sqrt(squares / 2), None]


def test_a_row_reads_a_missing_float_as_nan_and_a_whole_column_mean_skips_it():
    frame = pl.DataFrame({"a": [None, 0.5], "b": ["x", None]})
    row = frames.first_row(frame)
    assert np.isnan(row["a"]) and row["b"] == "x" and frames.first_row(frame.clear()) is None
    assert aggregate.mean(pl.Series([0.1, None, 0.2, float("nan")])) == (0.1 + 0.2) / 2
    assert np.isnan(aggregate.sd(pl.Series([0.3, None])))
