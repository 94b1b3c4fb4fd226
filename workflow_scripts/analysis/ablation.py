"""Section 4.2's insights as experiments: retrieval, label format, typo noise, k and order.

Every setting is read on the same held-out test prompts (those of the baseline's Table 2), through
the head the baseline chose on its select split (max kernel, per seed). Per prompt we keep the ICL
prediction, that head's kernel-regression prediction, the "bandwidth" of its kernel (the entropy of its
normalized weights over the demonstrations: lower = a narrower kernel) and the mean encoder similarity
of the demonstrations to the test input. Summaries average over seeds per prompt and bootstrap over prompts.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from workflow_scripts.core import stats, table_io, tables
from workflow_scripts.core.kernels import attention_weights, kernel_vote, normalized_entropy, unit_rows
from workflow_scripts.core.readers import iter_prompts, read_attention_rows, read_embeddings
from workflow_scripts.core.split import ablation_ids

METRICS = ("icl_accuracy", "agreement", "head_accuracy", "entropy", "demo_similarity", "n_demos")
SHIFTED = ("icl_accuracy", "agreement", "entropy")


def chosen_head(heldout: pd.DataFrame) -> tuple[int, int]:
    """The (layer, head) the baseline chose for the max kernel, from its Table 2 rows ("L23 H2")."""
    choice = heldout[heldout.method == "head_max"].choice.iloc[0]
    layer, head = choice.split()
    return int(layer[1:]), int(head[1:])


def prompt_rows(
    prompts: pa.Table, shards: pa.Table, head: tuple[int, int], keep: set[int], embeddings: dict[str, np.ndarray],
    n_classes: int,
) -> list[dict]:
    """One row per kept prompt: predictions, kernel bandwidth and demonstration similarity."""
    rows = []
    layer, h = head
    for p in iter_prompts(prompts, shards):
        if p["prompt_id"] not in keep:
            continue
        weights = attention_weights(p["attention"][layer, h], p["x_start"], p["y_pos"])["max"]
        query = unit_rows(embeddings[p["example_id"]])
        demos = unit_rows(np.stack([embeddings[d] for d in p["demo_ids"]]))
        rows.append({
            "prompt_id": p["prompt_id"], "example_id": p["example_id"], "label": p["label"],
            "icl_prediction": p["prediction"],
            "head_prediction": int(kernel_vote(weights, np.asarray(p["demo_labels"]), n_classes)),
            "entropy": normalized_entropy(weights), "demo_similarity": float((demos @ query).mean()),
            "n_demos": len(p["demo_ids"]),
        })
    return rows


def ablation_summary(rows: pd.DataFrame, kind: str, baseline: str, n_resamples: int, seed: int) -> dict[str, list]:
    """Columns of ABLATION_SUMMARY: per task and setting each metric's mean over prompts (seed-averaged)
    with a bootstrap CI, and for ICL accuracy, agreement and entropy the paired difference to `baseline`
    (metric "<name>_shift"); a k ablation adds that difference from its smallest to its largest k
    (setting "<largest> vs <smallest>"), an order ablation the share of prompts whose prediction changes."""
    rows = rows.assign(
        icl_accuracy=rows.icl_prediction == rows.label,
        agreement=rows.head_prediction == rows.icl_prediction,
        head_accuracy=rows.head_prediction == rows.label,
    )
    out: dict[str, list] = {name: [] for name in tables.ABLATION_SUMMARY.names}

    def add(task: str, setting: str, metric: str, per_prompt: pd.Series, n_seeds: int) -> None:
        low, high = stats.bootstrap_ci(per_prompt.to_numpy(dtype=float), n_resamples, seed)
        row = {"task": task, "setting": setting, "metric": metric, "mean": float(per_prompt.mean()),
               "ci_low": low, "ci_high": high, "n_prompts": len(per_prompt), "n_seeds": n_seeds}
        for name in out:
            out[name].append(row[name])

    groups = rows.groupby(["task", "setting"], sort=False)
    means = {key: part.groupby("example_id")[list(METRICS)].mean() for key, part in groups}
    n_seeds = {key: part.seed.nunique() for key, part in groups}
    for key, per in means.items():
        for metric in METRICS:
            add(*key, metric, per[metric], n_seeds[key])
    # Every setting shows the same test inputs, so a difference is paired per input: a far tighter
    # test than comparing two separate intervals.
    pairs = [(task, setting, setting, baseline) for task, setting in means if setting != baseline]
    if kind == "k":
        for task in rows.task.unique():
            by_k = sorted((m.n_demos.mean(), s) for (t, s), m in means.items() if t == task)
            largest, smallest = by_k[-1][1], by_k[0][1]
            pairs.append((task, f"{largest} vs {smallest}", largest, smallest))
    for task, name, a, b in pairs:
        for metric in SHIFTED:
            add(task, name, f"{metric}_shift", means[(task, a)][metric] - means[(task, b)][metric], n_seeds[(task, a)])
    if kind == "order":
        for task, part in rows.groupby("task", sort=False):
            per = part.groupby(["seed", "example_id"])
            for metric, column in (("icl_changed", "icl_prediction"), ("head_changed", "head_prediction")):
                changed = (per[column].nunique() > 1).groupby("example_id").mean()
                add(task, "any order", metric, changed, part.seed.nunique())
    return out


def write_ablation(
    sets: list[dict], heldout_paths: dict[str, str], embeddings_paths: dict[str, str], kind: str, baseline: str,
    n_classes: dict[str, int], cfg: dict, rows_out: str | Path, summary_out: str | Path,
) -> None:
    """`sets`: dicts with task, seed, setting, prompts (path) and shards (paths); heldout_paths and
    embeddings_paths map "task/seed" and task to the baseline's Table 2 rows and the embeddings."""
    frames = []
    for s in sets:
        heldout = table_io.read_table(heldout_paths[f"{s['task']}/{s['seed']}"], tables.HELDOUT).to_pandas()
        prompts = table_io.read_table(s["prompts"], tables.PROMPTS)
        shards = read_attention_rows(s["shards"])
        held = heldout.drop_duplicates("prompt_id")
        keep = set(ablation_ids(held.prompt_id.to_numpy(), held.label.to_numpy(), cfg["ablation_prompts"]).tolist())
        rows = prompt_rows(prompts, shards, chosen_head(heldout), keep, read_embeddings(embeddings_paths[s["task"]]), n_classes[s["task"]])
        if {r["prompt_id"] for r in rows} != keep:
            raise ValueError(f"{s['prompts']}: setting {s['setting']!r} lacks held-out prompts of the baseline; "
                             "were analysis.n_select / n_heldout / ablation_prompts changed without rebuilding it?")
        frames.append(pd.DataFrame(rows).assign(task=s["task"], seed=s["seed"], setting=s["setting"]))
    rows = pd.concat(frames, ignore_index=True)
    table_io.write_table(pa.Table.from_pandas(rows, preserve_index=False), tables.ABLATION_PROMPTS, rows_out)
    table_io.write_table(ablation_summary(rows, kind, baseline, cfg["bootstrap_resamples"], cfg["bootstrap_seed"]), tables.ABLATION_SUMMARY, summary_out)


def from_snakemake(smk) -> None:
    write_ablation(
        smk.params.sets, smk.params.heldout, smk.params.embeddings, smk.params.kind, smk.params.baseline, smk.params.n_classes,
        smk.params.analysis, smk.output.rows, smk.output.summary,
    )
