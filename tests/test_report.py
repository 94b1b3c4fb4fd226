"""The report's pure pieces: tables as CSV and sortable HTML, report.md pieces, the best-heads table,
Table 2 with the paper's numbers, and the assembly order of results/report.md."""
from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.report import assemble, head_tables, similarity, theory
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
    frame = pd.DataFrame({"kernel": ["max", "label"], "agreement_sd": [0.1, float("nan")]})
    report_files.write_table(frame, out, "A & B", ["one note"])
    assert pd.read_csv(out.csv).columns.tolist() == ["kernel", "agreement_sd"]
    page = (tmp_path / "t.html").read_text()
    assert "<th>agreement sd</th>" in page and "<h1>A &amp; B</h1>" in page and "<p>one note</p>" in page
    assert "addEventListener" in page and "http" not in page  # sorts offline


def test_a_piece_reads_back_as_the_lines_written(tmp_path):
    lines = ["### title", "", "| a | b |", ""]
    report_files.write_piece(tmp_path / "p.md", lines)
    assert report_files.read_piece(tmp_path / "p.md") == lines


def heads_frame() -> pd.DataFrame:
    """Two seeds of a 2-layer x 2-head model; L1 H0 is best for every kernel, L0 H1 second."""
    score = {(0, 0): 0.2, (0, 1): 0.6, (1, 0): 0.9, (1, 1): 0.4}
    return pd.DataFrame([
        {"layer": l, "head": h, "kernel": k, "agreement": a + 0.01 * seed, "accuracy": 0.5}
        for seed in (0, 1) for k in ("max", "label", "mean") for (l, h), a in score.items()
    ])


def test_top_heads_lists_the_best_heads_per_kernel_with_sd_over_seeds():
    table = head_tables.top_heads(heads_frame(), 0.5)
    assert table.groupby("kernel").size().to_dict() == {"label": 2, "max": 2, "mean": 2}
    best = table[table.kernel == "max"]
    assert best[["rank", "layer", "head", "depth"]].values.tolist() == [[1, 1, 0, 1.0], [2, 0, 1, 0.0]]
    assert np.isclose(best.agreement.iloc[0], 0.905) and np.isclose(best.agreement_sd.iloc[0], 0.01 / np.sqrt(2))


def test_table2_rows_carry_the_papers_number_for_the_same_task():
    table = pd.DataFrame({
        "method": ["icl", "null", "head_max"], "metric": ["accuracy", "agreement", "agreement"],
        "mean": [0.6, 0.5, 0.7], "sd": [0.01, 0.02, 0.03], "ci_low": [0.5, 0.4, 0.6], "ci_high": [0.7, 0.6, 0.8],
        "seeds_ci_low": [0.45, 0.35, 0.5], "seeds_ci_high": [0.75, 0.65, 0.9], "n_seeds": [2] * 3, "n_heldout": [10] * 3, "choices": [None, None, "L1 H0 (every seed)"],
        "reference": [""] * 3, "same_as": [""] * 3,
    })
    frame = table2_report.table2_frame(table, "rotten_tomatoes")
    assert frame.paper_gptj.tolist()[0] == 0.671 and np.isnan(frame.paper_gptj[1]) and frame.paper_gptj[2] == 0.683
    assert np.isnan(table2_report.table2_frame(table, "toy").paper_gptj).all()
    assert frame.seeds_ci_high.tolist() == [0.75, 0.65, 0.9]
    lines = "\n".join(table2_report.table2_lines(table, "rotten_tomatoes", "enc"))
    assert "0.700 ± 0.030 [0.600, 0.800; seeds 0.500, 0.900]" in lines
    assert "Degenerate ICL" not in lines  # the null baseline agrees on 50%
    constant = table.assign(mean=[0.6, 0.97, 0.97])
    assert "**Degenerate ICL:** the model gives its most frequent answer on 97% of held-out prompts" in "\n".join(
        table2_report.table2_lines(constant, "rotten_tomatoes", "enc"))


def test_report_md_puts_table_2_first_then_each_set_then_ablations_causal_check_and_theory():
    study = {"models": ["m"], "tasks": ["t"], "seeds": [0, 1], "settings": ["random"], "n_eval": 8, "k": 4,
             "n_select": 4, "n_heldout": 4, "prepend_bos": True}
    summaries = [pd.DataFrame({"n_prompts": [8], "icl_accuracy": [a], "null_agreement": [0.5], "null_accuracy": [0.5],
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
    table = pd.DataFrame(values | {"variant": ["shared", "block", "block"], "kernel": ["constant"] * 3,
                                   "n_demos": [1, 1, 1], "hmm_seed": [None, None, 2]})
    frame = theory.theory_frame(table)
    assert frame.columns[0] == "variant" and frame.variant.tolist() == ["shared", "block"]


def test_the_53_verdict_names_the_reading_that_tracks_fig_3_or_says_neither_does():
    def table(label_words: float, next_token: float) -> pd.DataFrame:
        return pd.DataFrame([
            {"similarity": s, "kernel": k, "layer": 1, "head": 0, "pearson": 0.1, "share_positive": 0.5,
             "corr_with_agreement": {"label_words": label_words, "next_token": next_token}[s] if k == "max" else 0.9}
            for s in similarity.SIMILARITY_TEXT for k in ("max", "label")
        ])

    text = "\n".join(similarity.similarity_lines(table(-0.1, 0.4), 100, 0.001, "f.png"))
    assert "the next token reading tracks Fig. 3 more closely (next token 0.400, label words -0.100)" in text
    text = "\n".join(similarity.similarity_lines(table(-0.1, -0.3), 100, 0.001, "f.png"))
    assert "neither reading tracks Fig. 3 (label words -0.100, next token -0.300)" in text
    assert "within 0.001 of the full-vocabulary one" in text
