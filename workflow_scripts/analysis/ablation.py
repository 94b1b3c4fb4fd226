"""Section 4.2's insights as experiments: retrieval, label format, typo noise, k and order.

Every setting is read on the same held-out test prompts (those of the baseline's Table 2), through
the head the baseline chose on its select split (max kernel, per seed). Per prompt we keep the ICL
prediction, that head's kernel-regression prediction, the "bandwidth" of its kernel (the entropy of its
normalized weights over the demonstrations: lower = a narrower kernel) and the mean encoder similarity
of the demonstrations to the test input. Summaries average over seeds per prompt and bootstrap over prompts.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from workflow_scripts.core import aggregate, stats, table_io, tables
from workflow_scripts.core.kernels import attention_weights, kernel_vote, normalized_entropy, unit_rows
from workflow_scripts.core.readers import Shards, iter_prompts, read_attention_rows, read_embeddings
from workflow_scripts.core.split import ablation_ids

METRICS = ("icl_accuracy", "agreement", "head_accuracy", "entropy", "demo_similarity", "n_demos")
SHIFTED = ("icl_accuracy", "agreement", "entropy")
# The metrics that may be missing (NaN, written as null): the others are counts and 0/1 indicators.
FLOAT_METRICS = ("entropy", "demo_similarity")
# ABLATION_PROMPTS' columns of one prompt row, as prompt_rows makes them.
ROW_SCHEMA = {name: pl.String if name == "example_id" else pl.Float64 if name in FLOAT_METRICS else pl.Int64
              for name in ("prompt_id", "example_id", "label", "icl_prediction", "head_prediction", *FLOAT_METRICS, "n_demos")}


def chosen_head(heldout: pl.DataFrame) -> tuple[int, int]:
    """The (layer, head) the baseline chose for the max kernel, from its Table 2 rows ("L23 H2")."""
    choice = heldout.filter(pl.col("method") == "head_max")["choice"][0]
    layer, head = choice.split()
    return int(layer[1:]), int(head[1:])


def prompt_rows(
    prompts: pa.Table, shards: Shards | pa.Table, head: tuple[int, int], keep: set[int], embeddings: dict[str, np.ndarray],
    n_classes: int,
) -> list[dict]:
    """One row per kept prompt: predictions, kernel bandwidth and demonstration similarity. Only the
    kept prompts' attention rows are read (a third of a set's at the default sizes)."""
    rows = []
    layer, h = head
    kept = prompts.filter(pc.is_in(prompts.column("prompt_id"), pa.array(sorted(keep), prompts.schema.field("prompt_id").type)))
    for p in iter_prompts(kept, shards):
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


def per_example(part: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """Per example id (sorted), each column's mean over the part's rows of that example (missing values
    skipped; core/aggregate sums them, the float metrics as one block)."""
    floats = [c for c in columns if c in FLOAT_METRICS]
    blocks = [floats, *([c] for c in columns if c not in FLOAT_METRICS)]
    return aggregate.group_stats(part.with_columns(pl.col(columns).cast(pl.Float64)), ["example_id"], list(columns), blocks=blocks)


def difference(a: pl.DataFrame, b: pl.DataFrame, metric: str) -> pl.Series:
    """a - b per example; examples only one side holds give NaN (the union, sorted by example id)."""
    if a["example_id"].equals(b["example_id"]):
        return a[metric] - b[metric]
    both = a.select("example_id", pl.col(metric).alias("a")).join(
        b.select("example_id", pl.col(metric).alias("b")), on="example_id", how="full", coalesce=True)
    return both.sort("example_id").select((pl.col("a") - pl.col("b")).fill_null(float("nan")))["a"]


def ablation_summary(rows: pl.DataFrame, kind: str, baseline: str, n_resamples: int, seed: int) -> dict[str, list]:
    """Columns of ABLATION_SUMMARY: per task and setting each metric's mean over prompts (seed-averaged)
    with a bootstrap CI, and for ICL accuracy, agreement and entropy the paired difference to `baseline`
    (metric "<name>_shift"); a k ablation adds that difference from its smallest to its largest k
    (setting "<largest> vs <smallest>"), an order ablation the share of prompts whose prediction changes."""
    rows = rows.with_columns(
        icl_accuracy=aggregate.equal("icl_prediction", "label"), agreement=aggregate.equal("head_prediction", "icl_prediction"),
        head_accuracy=aggregate.equal("head_prediction", "label"),
    )
    out: dict[str, list] = {name: [] for name in tables.ABLATION_SUMMARY.names}

    def add(task: str, setting: str, metric: str, per_prompt: pl.Series, n_seeds: int) -> None:
        low, high = stats.bootstrap_ci(per_prompt.to_numpy().astype(float), n_resamples, seed)
        row = {"task": task, "setting": setting, "metric": metric, "mean": aggregate.mean(per_prompt),
               "ci_low": low, "ci_high": high, "n_prompts": len(per_prompt), "n_seeds": n_seeds}
        for name in out:
            out[name].append(row[name])

    groups = rows.partition_by("task", "setting", maintain_order=True, as_dict=True)
    means = {key: per_example(part, METRICS) for key, part in groups.items()}
    n_seeds = {key: part["seed"].n_unique() for key, part in groups.items()}
    for key, per in means.items():
        for metric in METRICS:
            add(*key, metric, per[metric], n_seeds[key])
    # Every setting shows the same test inputs, so a difference is paired per input: a far tighter
    # test than comparing two separate intervals.
    pairs = [(task, setting, setting, baseline) for task, setting in means if setting != baseline]
    if kind == "k":
        for task in rows["task"].unique(maintain_order=True):
            by_k = sorted((aggregate.mean(m["n_demos"]), s) for (t, s), m in means.items() if t == task)
            largest, smallest = by_k[-1][1], by_k[0][1]
            pairs.append((task, f"{largest} vs {smallest}", largest, smallest))
    for task, name, a, b in pairs:
        for metric in SHIFTED:
            add(task, name, f"{metric}_shift", difference(means[(task, a)], means[(task, b)], metric), n_seeds[(task, a)])
    if kind == "order":
        for (task,), part in rows.partition_by("task", maintain_order=True, as_dict=True).items():
            per = part.group_by("seed", "example_id").agg(
                icl_changed=pl.col("icl_prediction").n_unique() > 1, head_changed=pl.col("head_prediction").n_unique() > 1)
            for metric in ("icl_changed", "head_changed"):
                # a share of seeds, from 0/1 values: exact however it is summed
                changed = per.group_by("example_id").agg(pl.col(metric).mean()).sort("example_id")[metric]
                add(task, "any order", metric, changed, part["seed"].n_unique())
    return out


def write_ablation(
    sets: list[dict], heldout_paths: dict[str, str], embeddings_paths: dict[str, str], kind: str, baseline: str,
    n_classes: dict[str, int], cfg: dict, rows_out: str | Path, summary_out: str | Path,
) -> None:
    """`sets`: dicts with task, seed, setting, prompts (path) and shards (paths); heldout_paths and
    embeddings_paths map "task/seed" and task to the baseline's Table 2 rows and the embeddings."""
    frames = []
    for s in sets:
        heldout = pl.from_arrow(table_io.read_table(heldout_paths[f"{s['task']}/{s['seed']}"], tables.HELDOUT))
        prompts = table_io.read_table(s["prompts"], tables.PROMPTS)
        shards = read_attention_rows(s["shards"])
        held = heldout.unique("prompt_id", keep="first", maintain_order=True)
        keep = set(ablation_ids(held["prompt_id"].to_numpy(), held["label"].to_numpy(), cfg["ablation_prompts"]).tolist())
        rows = prompt_rows(prompts, shards, chosen_head(heldout), keep, read_embeddings(embeddings_paths[s["task"]]), n_classes[s["task"]])
        if {r["prompt_id"] for r in rows} != keep:
            raise ValueError(f"{s['prompts']}: setting {s['setting']!r} lacks held-out prompts of the baseline; "
                             "were analysis.n_select / n_heldout / ablation_prompts changed without rebuilding it?")
        frames.append(pl.DataFrame(rows, schema=ROW_SCHEMA).with_columns(
            task=pl.lit(s["task"]), seed=pl.lit(s["seed"], pl.Int64), setting=pl.lit(s["setting"])))
    # A NaN bandwidth or similarity is written as null, as it always was.
    rows = pl.concat(frames).with_columns(pl.col(FLOAT_METRICS).fill_nan(None))
    table_io.write_table(rows.rechunk().to_arrow(), tables.ABLATION_PROMPTS, rows_out)
    table_io.write_table(ablation_summary(rows, kind, baseline, cfg["bootstrap_resamples"], cfg["bootstrap_seed"]), tables.ABLATION_SUMMARY, summary_out)


def from_snakemake(smk) -> None:
    write_ablation(
        smk.params.sets, smk.params.heldout, smk.params.embeddings, smk.params.kind, smk.params.baseline, smk.params.n_classes,
        smk.params.analysis, smk.output.rows, smk.output.summary,
    )
