"""Table 2 (Section 5.5) in the report: per model x task x setting, every method's held-out agreement with
the ICL prediction and accuracy beside the paper's number; each head read against the strongest
query-free reading (the verdict whether it reads like a kernel); and the per-class prediction health.
The study-wide verdict list (which sets pass) is assemble.table2_verdicts, the paper's Table 2
headings.paper_table."""
from __future__ import annotations

import numpy as np
import polars as pl

from workflow_scripts.analysis import table2_rows
from workflow_scripts.core import paper, stats, table_io, tables
from workflow_scripts.report.files import Outputs, outputs_of, write_piece, write_table
from workflow_scripts.report.frames import first_row, frame_of, rows, stored
from workflow_scripts.report.text import set_title

METHOD_TEXT = {
    "icl": "ICL (the model's own prediction)",
    "icl_calibrated": "ICL, contextually calibrated (agreement: with the uncalibrated prediction)",
    "null": "null: always the select split's most frequent ICL prediction",
    "recency": "query-free: the last demonstration's label (recency)",
    "uniform": "query-free: uniform kernel (majority of the shown labels)",
    "positional": "query-free: positional kernel (one weight per slot)",
    "slot_label": "query-free: slot x label-word kernel",
    "head_max": "best head, max kernel (paper)",
    "head_label": "best head, label-token kernel",
    "head_mean": "best head, span-mean kernel",
    "head_max_nosink": "best head, max kernel without position 0 (the sink)",
    "kr_encoder": "kernel regression on {encoder}",
    "kr_hidden": "kernel regression on the model's hidden states",
}
PAPER_ROWS = {  # our (method, metric) -> the paper's Table 2 row
    ("icl", "accuracy"): "icl accuracy",
    ("head_max", "agreement"): "reconstruction agreement",
    ("head_max", "accuracy"): "reconstructed accuracy",
    ("kr_encoder", "accuracy"): "KR on all-MiniLM-L6-v2",
}
HEAD_METHODS = [m for m in METHOD_TEXT if table2_rows.is_head(m)]
# Short names for sentences: the query-free readings and the heads.
SHORT = {
    "recency": "recency (the last demonstration's label)", "uniform": "the uniform kernel",
    "positional": "the positional kernel", "slot_label": "the slot x label-word kernel",
    "head_max": "the paper's head (max kernel)", "head_label": "the label-token head", "head_mean": "the span-mean head",
    "head_max_nosink": "the sink-free max-kernel head", "icl": "ICL", "icl_calibrated": "calibrated ICL",
}

# ICL that answers one class on this share of held-out prompts (or more) is degenerate: any head that
# leans to that class "agrees" with it, so agreement says nothing about kernels there.
DEGENERATE_SHARE = 0.9


def paper_number(method: str, metric: str, task: str) -> float:
    """The paper's GPT-J-6B number for the same task, method and metric (nan where it has none)."""
    row = PAPER_ROWS.get((method, metric))
    return paper.TABLE2[row][task] if row and task in paper.TABLE2[row] else float("nan")


def row_of(table: pl.DataFrame, method: str, metric: str) -> dict | None:
    return first_row(table.filter((pl.col("method") == method) & (pl.col("metric") == metric)))


def degenerate_warning(table: pl.DataFrame) -> list[str]:
    """A warning where the ICL prediction is nearly constant (the null baseline's agreement)."""
    null = row_of(table, "null", "agreement")
    if null is None or null["mean"] < DEGENERATE_SHARE:
        return []
    return [
        f"**Degenerate ICL:** the model gives its most frequent answer on {null['mean']:.0%} of held-out prompts, so any head "
        "that leans to that class agrees with it; agreement here says nothing about kernels. Read accuracy against "
        "gold and the contextually calibrated row (calibration.*), or change the template, label words or k until "
        "the predictions vary.",
        "",
    ]


def signed(value: float) -> str:
    return f"{value:+.3f}"


def gain_text(gain: tuple[float, float, float, str]) -> str:
    mean, low, high, _ = gain
    return f"{signed(mean)} [{signed(low)}, {signed(high)}]"


def verdict_sentence(table: pl.DataFrame, method: str = "head_max") -> str:
    """Whether the chosen head reads like a kernel: its paired gain in agreement over the strongest
    query-free reading, and a plain statement when the interval does not exclude 0."""
    gain = table2_rows.gain_interval(table, method)
    if gain is None:
        return ""
    if table2_rows.too_few_heldout(table):
        return stats.too_few_text(table["n_heldout"][0], "held-out prompts per seed", "analysis.n_heldout")
    measured = (f"{SHORT[method][0].upper()}{SHORT[method][1:]} agrees with ICL {gain_text(gain)} more often than the strongest query-free reading, "
                f"{SHORT[gain[3]]} (paired per held-out prompt; 95% CI, seeds then examples)")
    if gain[1] > 0:
        return f"**Reads like a kernel:** {measured}."
    if gain[2] < 0:
        return f"**Not a kernel reading:** {measured}: the reading that never looks at the query agrees with ICL more often."
    return (f"**Not separated from a query-free reading:** {measured}. The interval includes 0, so the evidence does not "
            "separate this head from a reading that never looks at the query.")


def seeds_line(first: dict, per_seed_split: bool) -> str:
    shared = ("Every seed holds out its own test examples (analysis.heldout_per_seed), so the intervals over seeds count "
              "that variation too." if per_seed_split else
              "The seeds share their held-out test examples (prompts.split_seed fixes the split; "
              "analysis.heldout_per_seed: true draws it per seed), so ± sd over seeds is over demonstration draws only.")
    seeds = f"{int(first['n_seeds'])} seed{'s' if first['n_seeds'] != 1 else ''}"
    few = (f" † Fewer than {stats.MIN_EXAMPLES} held-out prompts per seed: the intervals are not to be read, and no "
           "verdict is drawn from them (raise analysis.n_heldout)." if stats.too_few(first["n_heldout"]) else "")
    return (f"Held out: {int(first['n_heldout'])} test prompts per seed, {seeds}. {shared} Cells: mean ± sd "
            f"over seeds [bootstrap 95% CI over held-out examples; seeds: the CI that resamples seeds, then examples].{few}")


def interval_cell(r: dict | None) -> str:
    if r is None:
        return "—"
    sd = "" if np.isnan(r["sd"]) else f" ± {r['sd']:.3f}"
    seeds = "" if r["n_seeds"] < 2 else f"; seeds {r['seeds_ci_low']:.3f}, {r['seeds_ci_high']:.3f}"
    few = " †" if stats.too_few(r["n_heldout"]) else ""
    return f"{r['mean']:.3f}{sd} [{r['ci_low']:.3f}, {r['ci_high']:.3f}{seeds}]{few}"


def head_cell(table: pl.DataFrame, method: str) -> str:
    """The chosen head's own numbers: R^2 of its weights on slot and slot x label, its weight shift
    under a query swap (when the study has one)."""
    parts = []
    r2 = [row_of(table, method, m) for m in ("r2_slot", "r2_slot_label")]
    if all(r is not None for r in r2):
        parts.append(f"R² {r2[0]['mean']:.2f} / {r2[1]['mean']:.2f}")
    shift = row_of(table, method, "weight_shift")
    if shift is not None:
        parts.append(f"swap shift {shift['mean']:.2f}")
    return "; ".join(parts)


def method_label(table: pl.DataFrame, method: str, encoder: str) -> str:
    """A method's row label; the uniform kernel's says how often it ties and how ties are broken; a head
    method names the later readings that chose the same head with the same predictions."""
    text = METHOD_TEXT[method].format(encoder=encoder)
    ties = row_of(table, method, "tie_rate")
    if ties is not None:
        text += f", ties on {ties['mean']:.0%} of prompts"
    if table2_rows.is_head(method):
        same = sorted(set(table.filter(pl.col("same_as") == method)["method"]), key=HEAD_METHODS.index)
        if same:
            text += " = " + " = ".join(METHOD_TEXT[m].removeprefix("best head, ") for m in same)
            text += " (the same head in every seed, identical predictions: one piece of evidence)"
    return text


def table2_lines(table: pl.DataFrame, task: str, encoder: str, per_seed_split: bool = False) -> list[str]:
    """Our Table 2 for one model x task x setting, with the paper's number for the same task beside it."""
    def paper(method: str, metric: str) -> str:
        number = paper_number(method, metric, task)
        return "—" if np.isnan(number) else f"{number:.3f}"

    first = rows(table.head(1))[0]
    lines = [
        *degenerate_warning(table),
        seeds_line(first, per_seed_split),
        "",
        f"| | agreement with ICL prediction | accuracy vs. gold | chosen on the select split | chosen head: R² slot / slot x label, query-swap shift | paper, agreement / accuracy ({task}) |",
        "|---|---|---|---|---|---|",
        f"| {METHOD_TEXT['icl']} | — | {interval_cell(row_of(table, 'icl', 'accuracy'))} | | | — / {paper('icl', 'accuracy')} |",
        f"| {METHOD_TEXT['null']} | {interval_cell(row_of(table, 'null', 'agreement'))} | {interval_cell(row_of(table, 'null', 'accuracy'))} | | | |",
    ]
    shown = set(table.filter(pl.col("same_as").fill_null("") == "")["method"])
    for method in METHOD_TEXT:
        if method in ("icl", "null") or method not in shown:
            continue
        choices = table.filter(pl.col("method") == method)["choices"]
        choice = choices[0] if len(choices) and isinstance(choices[0], str) else ""
        lines.append(
            f"| {method_label(table, method, encoder)} | {interval_cell(row_of(table, method, 'agreement'))} "
            f"| {interval_cell(row_of(table, method, 'accuracy'))} | {choice} | {head_cell(table, method)} "
            f"| {paper(method, 'agreement')} / {paper(method, 'accuracy')} |"
        )
    return lines + ["", *gain_lines(table)]


def gain_lines(table: pl.DataFrame) -> list[str]:
    """Every distinct head against the strongest query-free reading, and the verdict on the paper's head."""
    gains = table.filter((pl.col("metric") == table2_rows.GAIN) & (pl.col("same_as").fill_null("") == ""))
    if gains.is_empty():
        return []
    lines = [
        f"Against the strongest query-free reading on these held-out prompts, {SHORT[gains['reference'][0]]}: a head reads like a kernel "
        "only where the paired gain's 95% CI (seeds, then examples) excludes 0.",
        "",
        "| head | gain in agreement with ICL | reads like a kernel |",
        "|---|---|---|",
    ]
    for method in HEAD_METHODS:
        gain = table2_rows.gain_interval(gains, method)
        if gain is not None:
            verdict = "yes" if gain[1] > 0 else ("no: the query-free reading is better" if gain[2] < 0 else "not separated (CI includes 0)")
            verdict = "too few held-out prompts to read" if table2_rows.too_few_heldout(table) else verdict
            lines.append(f"| {METHOD_TEXT[method].removeprefix('best head, ')} | {gain_text(gain)} | {verdict} |")
    return lines + ["", verdict_sentence(table), ""]


# Prediction health -------------------------------------------------------------------------------

HEALTH_METHODS = {"icl": "ICL", "icl_calibrated": "calibrated ICL"}


def best_head(table: pl.DataFrame) -> str | None:
    """The head method with the highest held-out agreement (the best head Table 2 shows); a missing
    mean ranks last, ties keep the table's order."""
    heads = table.filter(pl.col("method").is_in(HEAD_METHODS) & (pl.col("metric") == "agreement"))
    ranked = heads.sort(pl.col("mean").fill_nan(None), descending=True, nulls_last=True, maintain_order=True)
    return None if ranked.is_empty() else ranked["method"][0]


def health_lines(health: pl.DataFrame, table: pl.DataFrame) -> list[str]:
    """Per class: gold share, and for ICL, calibrated ICL and the best head the share predicted and the
    recall; a flag for every class predicted on less than half its gold share, with what it means."""
    methods = {**HEALTH_METHODS}
    head = best_head(table)
    if head is not None:
        methods[head] = METHOD_TEXT[head]
    present = set(health["method"])
    methods = {m: text for m, text in methods.items() if m in present}
    by = {(r["method"], r["class_name"]): r for r in rows(health)}
    classes = health.filter(pl.col("method") == "icl").sort("class_index", maintain_order=True)["class_name"].to_list()
    lines = [
        "Prediction health on the held-out prompts of every seed (share of prompts predicted as each class / recall):",
        "",
        "| class | gold share | " + " | ".join(methods.values()) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for c in classes:
        cells = [f"{by[(m, c)]['predicted_share']:.0%} / {by[(m, c)]['recall']:.2f}" for m in methods]
        lines.append(f"| {c} | {by[('icl', c)]['gold_share']:.0%} | " + " | ".join(cells) + " |")
    flagged = health.filter(pl.col("under_predicted") & pl.col("method").is_in(list(methods)))
    # how many classes ICL answers at all
    answered = health.filter((pl.col("method") == "icl") & (pl.col("predicted") > 0))["class_name"].drop_nulls().n_unique()
    for row in rows(flagged):
        who = SHORT.get(row["method"], METHOD_TEXT.get(row["method"], row["method"]))
        never = f"never predicts {row['class_name']!r}" if row["predicted"] == 0 else \
            f"predicts {row['class_name']!r} on only {row['predicted_share']:.0%} of prompts"
        gold, recall = row["gold_share"], row["recall"]
        lines += ["", f"**Under-predicted class:** {who[0].upper()}{who[1:]} {never} (gold share {gold:.0%}, recall {recall:.2f})."]
        if row["method"] == "icl":
            lines[-1] += (f" Agreement with ICL is then agreement with a {answered}-class answer: a head that "
                          f"ignores {row['class_name']!r} demonstrations can agree without reading the query, and accuracy is "
                          "capped by the missing class.")
    return lines + [""]


def table2_frame(table: pl.DataFrame, task: str) -> pl.DataFrame:
    """Table 2 as one row per method and metric, with the paper's number for the same task."""
    paper_gptj = pl.Series("paper_gptj", [paper_number(m, k, task) for m, k in zip(table["method"], table["metric"])], pl.Float64)
    return table.select(
        "method", chosen_on_select=pl.col("choices").fill_null(""), metric="metric", mean="mean", sd="sd",
        ci_low="ci_low", ci_high="ci_high", seeds_ci_low="seeds_ci_low", seeds_ci_high="seeds_ci_high",
        paper_gptj=paper_gptj, reference="reference", same_as="same_as", n_seeds="n_seeds", n_heldout="n_heldout",
    )


def write_table2_section(table: pl.DataFrame, health: pl.DataFrame, title: str, task: str, encoder: str, per_seed_split: bool, out: Outputs) -> None:
    methods = "; ".join(f"{method} = {text.format(encoder=encoder)}" for method, text in METHOD_TEXT.items())
    write_table(table2_frame(table, task), out, f"Table 2: {title}", [
        "One head, chosen on the select split, read as a kernel regression on held-out prompts: mean and sd over "
        "seeds, bootstrap 95% CI over held-out examples (ci_*) and resampling seeds, then examples (seeds_ci_*). "
        "paper_gptj is the paper's GPT-J-6B number for the same task (empty where the paper has none). "
        f"Rows of metric {table2_rows.GAIN} are a head's agreement minus that of `reference`, the strongest query-free "
        "reading, paired per prompt; r2_* and weight_shift describe each seed's chosen head.",
        f"Methods. {methods}.",
        *[line.replace("**", "") for line in degenerate_warning(table) if line],
    ])
    write_piece(out.piece, [f"### {title}", "", *table2_lines(table, task, encoder, per_seed_split), *health_lines(health, table)])


def from_snakemake(smk) -> None:
    write_table2_section(
        stored(table_io.read_table(smk.input.table, tables.TABLE2)),
        frame_of(table_io.read_table(smk.input.health, tables.HEALTH)),
        set_title(smk.wildcards.model, smk.wildcards.task, smk.wildcards.setting), smk.wildcards.task,
        smk.params.encoder, smk.params.per_seed_split, outputs_of(smk),
    )
