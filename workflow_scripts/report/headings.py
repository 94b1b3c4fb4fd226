"""The headings results/report.md puts around the sections' pieces: the study header (with a warning
when the splits are too small to read), Table 2's heading with the paper's Table 2, each prompt set's
heading with its whole-set numbers, and the headings of the ablations and of the causal check."""
from __future__ import annotations

import polars as pl

from workflow_scripts.core import paper, stats
from workflow_scripts.core import aggregate
from workflow_scripts.report.text import mean_sd


def header_lines(title: str, study: dict) -> list[str]:
    return [
        f"# {title}",
        "",
        f"Models: {', '.join(study['models'])}. Tasks: {', '.join(study['tasks'])}. "
        f"Seeds: {', '.join(map(str, study['seeds']))}. Settings: {', '.join(study['settings'])}. "
        f"Prompts per set: {study['n_eval']} ({study['n_select']} to select heads, {study['n_heldout']} held out), "
        f"demonstrations per prompt: {study['k']}. "
        + ("Every prompt starts with the model's BOS token (prompts.prepend_bos)." if study["prepend_bos"]
           else "Prompts start with the template's first token unless the tokenizer adds a BOS token (prompts.prepend_bos: false)."),
        "",
        "Each attention head is read as a kernel regression over the demonstrations: demonstration i gets",
        "weight a_i from the last token's attention and the head predicts argmax_c sum_i a_i [y_i = c].",
        "Agreement is how often that reconstruction equals the model's own ICL prediction; the null",
        "baseline is the agreement of always answering the model's most frequent prediction, and the",
        "query-free readings (recency, the uniform kernel, a positional and a slot x label-word kernel, fitted",
        "on the select split) are what a head must beat before it reads like a kernel.",
        "",
        *small_sample_lines(study),
    ]


def small_sample_lines(study: dict) -> list[str]:
    """A warning at the top when Table 2's splits are too small to read (stats.MIN_EXAMPLES)."""
    few = [f"{key} = {study[key]}" for key in ("n_select", "n_heldout") if stats.too_few(study[key])]
    if not few:
        return []
    return [f"**Too few examples to read:** analysis.{', analysis.'.join(few)}, fewer than {stats.MIN_EXAMPLES}. Table 2, "
            "the causal check and the ablations all rest on the held-out prompts; their intervals are marked † or replaced "
            "by a 'too few to read' note, and no verdict is drawn from them. Raise prompts.n_eval and analysis.n_select / "
            "n_heldout for numbers to report.", ""]


def paper_table() -> list[str]:
    """The paper's Table 2 (GPT-J-6B), every task, from core/paper.py."""
    tasks = paper.TABLE2_TASKS
    return [
        f"The paper's Table 2 (GPT-J-6B, {paper.TABLE2_SPLIT['select']} select / {paper.TABLE2_SPLIT['heldout']} held-out examples):",
        "",
        "| GPT-J-6B | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
        *[f"| {row} | " + " | ".join(f"{values[task]:.3f}" for task in tasks) + " |" for row, values in paper.TABLE2.items()],
        "",
    ]


def table2_heading() -> list[str]:
    return ["## Table 2 (Section 5.5): one head, chosen on the select split, on held-out prompts", "", *paper_table()]


def set_heading(title: str, summaries: list[pl.DataFrame]) -> list[str]:
    """A prompt set's heading and its whole-set numbers, over seeds."""
    summary = pl.concat(summaries)
    return [
        f"## {title}",
        "",
        f"All {int(summary['n_prompts'][0])} prompts per seed, {len(summaries)} seeds: ICL accuracy {mean_sd(summary['icl_accuracy'])}; "
        f"null baseline: agreement {mean_sd(summary['null_agreement'])}, accuracy {mean_sd(summary['null_accuracy'])}. "
        "Query-free readings fitted on all prompts (in-sample, like 5.2's best head), agreement with ICL: "
        f"recency {mean_sd(summary['recency_agreement'])}, uniform kernel {mean_sd(summary['uniform_agreement'])} "
        f"(ties on {aggregate.mean(summary['uniform_tie_rate']):.0%} of prompts), positional kernel {mean_sd(summary['positional_agreement'])}, "
        f"slot x label-word kernel {mean_sd(summary['slot_label_agreement'])}.",
        "",
    ]


def ablations_heading(model: str) -> list[str]:
    """What every ablation of one model shares; results/report.md puts it before their pieces."""
    return [
        f"## Section 4.2 ablations: {model}",
        "",
        "Each setting is run on the held-out prompts of Table 2 and read through the head the baseline chose on its",
        "select split (max kernel). Entropy is that head's normalized kernel entropy over the demonstrations (lower =",
        "narrower kernel); demo similarity is the mean encoder cosine of the demonstrations to the test input.",
        "Every setting shows the same test inputs, so a setting is compared with the baseline by the paired",
        "difference per input, mean [bootstrap 95% CI].",
        "",
    ]


def causal_check_heading() -> list[str]:
    """What every causal check shares; results/report.md puts it before their pieces."""
    return [
        "## Causal check: do the kernel heads drive the prediction?",
        "",
        "Beyond the paper's correlations: edits at the last prompt token only (the prefix untouched) on the",
        "held-out prompts, in the top-m heads by select-split agreement, in m random heads drawn from the",
        "same layers, in m random non-top heads matched one by one to the top heads' attention mass (the",
        "last token's attention on the demonstrations, for steering on the predicted class's; select split)",
        "(controls averaged over draws) and in the m heads that agree least. Head knockout replaces each",
        "head's output by its mean over the prompt set; label-attention knockout removes the last token's",
        "attention to the label tokens; steering moves the attention on the predicted class's demonstrations",
        "onto the runner-up class's. Flip rate: share of predictions that change; ICL accuracy change: edited",
        "minus unedited accuracy on the same prompts (a head set that flips predictions without changing it",
        "is not shown to drive the correct prediction); margin: label logit of the original prediction minus",
        "the best other label's. Mean [bootstrap 95% CI] over held-out examples (seed-averaged); top - random",
        "and top - matched are paired differences per example.",
        "",
    ]
