"""Table 2 over seeds: ICL accuracy, and per method the held-out agreement with the ICL prediction
and accuracy against gold, beside the null baseline and the query-free readings; the paired gain of
each head over the strongest query-free reading; and every method's per-class predictions (HEALTH).

mean and sd are over seeds (each seed is an independent draw of demonstrations). By default every
seed holds out the same test examples (analysis.heldout_per_seed: false), so "over seeds" is over
demonstration draws only; one interval is a bootstrap over those examples of the per-example statistic
averaged over seeds, the other resamples seeds and then examples, so that the variation between seeds
(their demonstrations, the head each chose) counts too. When seeds hold out different examples, the
first interval resamples the (seed, example) pairs and the second each seed's own examples.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.analysis.baselines import BASELINES
from workflow_scripts.analysis.table2_rows import GAIN, is_head, read_seeds
from workflow_scripts.core import stats, table_io, tables

# A class predicted on less than this share of its gold share is flagged as under-predicted.
UNDER_PREDICTED = 0.5


def indicators(frame: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """Per (method, metric), the per-example value: a long table of seed, example_id and v."""
    out = {}
    first = frame[frame.method == frame.method.iloc[0]]
    out[("icl", "accuracy")] = first.assign(v=first.icl_prediction == first.label)
    out[("null", "agreement")] = first.assign(v=first.null_prediction == first.icl_prediction)
    out[("null", "accuracy")] = first.assign(v=first.null_prediction == first.label)
    for method, rows in frame.groupby("method", sort=False):
        out[(method, "agreement")] = rows.assign(v=rows.prediction == rows.icl_prediction)
        out[(method, "accuracy")] = rows.assign(v=rows.prediction == rows.label)
        if "tied" in rows and rows.tied.notna().all():
            out[(method, "tie_rate")] = rows.assign(v=rows.tied.astype(bool))
    return {key: rows[["seed", "example_id", "v"]].astype({"v": float}) for key, rows in out.items()}


def strongest_baseline(values: dict[tuple[str, str], pd.DataFrame]) -> str | None:
    """The query-free reading with the highest held-out agreement: the strongest trivial explanation a
    head is read against (chosen on the held-out prompts, which favours the baseline, not the head)."""
    scores = {b: values[(b, "agreement")].v.mean() for b in BASELINES if (b, "agreement") in values}
    return max(scores, key=scores.get) if scores else None


def gains(values: dict[tuple[str, str], pd.DataFrame], baseline: str) -> dict[str, pd.DataFrame]:
    """Per head method, its agreement minus the baseline's on the same held-out prompt of the same seed."""
    reference = values[(baseline, "agreement")].set_index(["seed", "example_id"]).v
    out = {}
    for (method, metric), rows in values.items():
        if metric == "agreement" and is_head(method):
            paired = rows.set_index(["seed", "example_id"]).v - reference
            out[method] = paired.reset_index()
    return out


def seeds_share_examples(rows: pd.DataFrame) -> bool:
    sets = rows.groupby("seed").example_id.apply(frozenset)
    return sets.nunique() == 1


def interval_row(rows: pd.DataFrame, n_resamples: int, seed: int) -> dict:
    """mean and sd over seeds, and both bootstrap intervals, of one per-example value."""
    per_seed = rows.groupby("seed").v.mean().to_numpy()
    if seeds_share_examples(rows):
        grid = rows.pivot(index="example_id", columns="seed", values="v").to_numpy()
        low, high = stats.bootstrap_ci(grid.mean(axis=1), n_resamples, seed)
        seeds_low, seeds_high = stats.hierarchical_bootstrap_ci(grid, n_resamples, seed)
        n_heldout = grid.shape[0]
    else:
        low, high = stats.bootstrap_ci(rows.v.to_numpy(), n_resamples, seed)
        groups = [g.to_numpy() for _, g in rows.groupby("seed").v]
        seeds_low, seeds_high = stats.ragged_hierarchical_bootstrap_ci(groups, n_resamples, seed)
        n_heldout = int(rows.groupby("seed").size().iloc[0])
    return {
        "mean": float(per_seed.mean()), "sd": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan"),
        "ci_low": low, "ci_high": high, "seeds_ci_low": seeds_low, "seeds_ci_high": seeds_high,
        "n_seeds": len(per_seed), "n_heldout": n_heldout,
    }


def describe_choices(rows: pd.DataFrame) -> str:
    """What each seed chose ("seed 0: L23 H2; seed 1: L22 H1"), or the choice once when all agree."""
    per_seed = rows.groupby("seed").choice.first()
    if per_seed.nunique() == 1:
        return f"{per_seed.iloc[0]} (every seed)"
    return "; ".join(f"seed {s}: {c}" for s, c in per_seed.items())


def same_heads(frame: pd.DataFrame) -> dict[str, str]:
    """Head methods that repeat an earlier one: the same head in every seed with the same held-out
    predictions (e.g. the max kernel without position 0 and the label-token kernel), method -> earlier."""
    heads = [m for m in frame.method.unique() if is_head(m)]
    signature = {
        m: (tuple(frame[frame.method == m].sort_values(["seed", "prompt_id"]).choice),
            tuple(frame[frame.method == m].sort_values(["seed", "prompt_id"]).prediction))
        for m in heads
    }
    out = {}
    for i, method in enumerate(heads):
        earlier = [m for m in heads[:i] if signature[m] == signature[method] and m not in out]
        if earlier:
            out[method] = earlier[0]
    return out


# Per-head numbers of each seed's chosen head that Table 2 shows beside it: from heads.parquet (R^2 of
# its weights on slot and slot x label word) and query_swap.parquet (how far they move with the query).
HEAD_COLUMNS = {"heads": ("r2_slot", "r2_slot_label"), "swap": ("weight_shift", "vote_change")}


def chosen_head_rows(frame: pd.DataFrame, by_name: dict[str, pd.DataFrame | None]) -> list[tuple[tuple[str, str], dict]]:
    """((method, metric), row fields) of each head method's chosen head, mean and sd over seeds of the
    head each seed chose (no interval: these describe the head, they do not score it)."""
    out = []
    for method in (m for m in frame.method.unique() if is_head(m)):
        kernel = method.removeprefix("head_")
        chosen = frame[frame.method == method].groupby("seed").choice.first()
        n_heldout = int(frame[frame.method == method].groupby("seed").size().iloc[0])
        for name, metrics in HEAD_COLUMNS.items():
            table = by_name.get(name)
            if table is None or table.empty:
                continue
            indexed = table[table.kernel == kernel].set_index(["seed", "layer", "head"])
            for metric in metrics:
                values = np.array([indexed.loc[(s, *parse_head(c)), metric] for s, c in chosen.items()], dtype=float)
                out.append(((method, metric), {
                    "mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                    "ci_low": float("nan"), "ci_high": float("nan"), "seeds_ci_low": float("nan"),
                    "seeds_ci_high": float("nan"), "n_seeds": len(values), "n_heldout": n_heldout,
                }))
    return out


def parse_head(choice: str) -> tuple[int, int]:
    """(layer, head) of a head method's choice ("L3 H2", analysis/heldout.py's format)."""
    layer, head = choice.split()
    return int(layer[1:]), int(head[1:])


def table2_columns(frame: pd.DataFrame, n_resamples: int, seed: int, by_name: dict[str, pd.DataFrame | None] | None = None) -> dict[str, list]:
    """Columns of TABLE2 from the held-out rows of all seeds (a `seed` column added); `by_name` adds the
    chosen heads' own numbers (HEAD_COLUMNS: heads and query-swap tables of every seed, a `seed` column added)."""
    columns: dict[str, list] = {name: [] for name in tables.TABLE2.names}
    choices = frame.groupby("method").apply(describe_choices, include_groups=False)
    same = same_heads(frame)
    values = indicators(frame)
    baseline = strongest_baseline(values)
    rows = [((method, metric), v, "") for (method, metric), v in values.items()]
    if baseline is not None:
        rows += [((method, GAIN), v, baseline) for method, v in gains(values, baseline).items()]
    described = [(key, interval_row(v, n_resamples, seed), reference) for key, v, reference in rows]
    described += [(key, fields, "") for key, fields in chosen_head_rows(frame, by_name or {})]
    for (method, metric), fields, reference in described:
        row = {
            "method": method, "metric": metric, **fields,
            "choices": choices.get(method, ""), "reference": reference, "same_as": same.get(method, ""),
        }
        for name in columns:
            columns[name].append(row[name])
    return columns


def health(frame: pd.DataFrame, classes: list[str]) -> dict[str, list]:
    """Columns of HEALTH: per method (and ICL itself) and class, how often it is predicted against how
    often it is the gold label, and its recall, pooled over seeds."""
    first = frame[frame.method == frame.method.iloc[0]]
    predictions = {"icl": first.assign(prediction=first.icl_prediction)}
    predictions.update({m: rows for m, rows in frame.groupby("method", sort=False)})
    columns: dict[str, list] = {name: [] for name in tables.HEALTH.names}
    for method, rows in predictions.items():
        n = len(rows)
        for c, name in enumerate(classes):
            gold = rows.label == c
            predicted_share = float((rows.prediction == c).mean())
            gold_share = float(gold.mean())
            row = {
                "method": method, "class_index": c, "class_name": name, "predicted": int((rows.prediction == c).sum()),
                "gold": int(gold.sum()), "predicted_share": predicted_share, "gold_share": gold_share,
                "recall": float((rows.prediction[gold] == c).mean()) if gold.any() else float("nan"),
                "under_predicted": bool(gold_share > 0 and predicted_share < UNDER_PREDICTED * gold_share),
                "n": n, "n_seeds": int(rows.seed.nunique()),
            }
            for key in columns:
                columns[key].append(row[key])
    return columns


def write_table2(
    heldout_paths: list[str], seeds: list[int], classes: list[str], n_resamples: int, seed: int, out: str | Path,
    health_out: str | Path, heads_paths: list[str] = (), swap_paths: list[str] = (),
) -> None:
    frame = read_seeds(heldout_paths, seeds, tables.HELDOUT)
    by_name = {"heads": read_seeds(list(heads_paths), seeds, tables.HEADS), "swap": read_seeds(list(swap_paths), seeds, tables.QUERY_SWAP)}
    table_io.write_table(table2_columns(frame, n_resamples, seed, by_name), tables.TABLE2, out)
    table_io.write_table(health(frame, classes), tables.HEALTH, health_out)


def from_snakemake(smk) -> None:
    write_table2(
        list(smk.input.heldout), smk.params.seeds, smk.params.classes, smk.params.bootstrap_resamples,
        smk.params.bootstrap_seed, smk.output.table, smk.output.health, list(smk.input.heads), list(smk.input.query_swap),
    )


