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
import polars as pl

from workflow_scripts.analysis.baselines import BASELINES
from workflow_scripts.analysis.table2_rows import GAIN, is_head, read_seeds
from workflow_scripts.core import stats, table_io, tables
from workflow_scripts.core.aggregate import equal

# A class predicted on less than this share of its gold share is flagged as under-predicted.
UNDER_PREDICTED = 0.5
KEYS = ["seed", "example_id"]


def of_method(frame: pl.DataFrame, method: str) -> pl.DataFrame:
    return frame.filter(pl.col("method") == method)


def by_method(frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The rows of each method, in the order methods first appear."""
    return {m: rows for (m,), rows in frame.partition_by("method", maintain_order=True, as_dict=True).items()}


def indicators(frame: pl.DataFrame) -> dict[tuple[str, str], pl.DataFrame]:
    """Per (method, metric), the per-example value: a long table of seed, example_id and v."""
    out = {}
    first = of_method(frame, frame["method"][0])
    out[("icl", "accuracy")] = first.with_columns(v=equal("icl_prediction", "label"))
    out[("null", "agreement")] = first.with_columns(v=equal("null_prediction", "icl_prediction"))
    out[("null", "accuracy")] = first.with_columns(v=equal("null_prediction", "label"))
    for method, rows in by_method(frame).items():
        out[(method, "agreement")] = rows.with_columns(v=equal("prediction", "icl_prediction"))
        out[(method, "accuracy")] = rows.with_columns(v=equal("prediction", "label"))
        if "tied" in rows.columns and rows["tied"].null_count() == 0:
            out[(method, "tie_rate")] = rows.with_columns(v=pl.col("tied"))
    return {key: rows.select(*KEYS, pl.col("v").cast(pl.Float64)) for key, rows in out.items()}


# The values are 0/1 (a gain -1/0/1), so their sums are exact and every mean of them is the same
# however it is summed.


def strongest_baseline(values: dict[tuple[str, str], pl.DataFrame]) -> str | None:
    """The query-free reading with the highest held-out agreement: the strongest trivial explanation a
    head is read against (chosen on the held-out prompts, which favours the baseline, not the head)."""
    scores = {b: values[(b, "agreement")]["v"].mean() for b in BASELINES if (b, "agreement") in values}
    return max(scores, key=scores.get) if scores else None


def paired(rows: pl.DataFrame, reference: pl.DataFrame) -> pl.DataFrame:
    """rows' v minus reference's on the same (seed, example); a pair only one side holds gives NaN
    (the union of both, sorted)."""
    if rows.select(KEYS).equals(reference.select(KEYS)):
        return rows.with_columns(v=pl.col("v") - reference["v"])
    both = rows.join(reference, on=KEYS, how="full", coalesce=True, suffix="_reference")
    return both.sort(KEYS).select(*KEYS, v=(pl.col("v") - pl.col("v_reference")).fill_null(float("nan")))


def gains(values: dict[tuple[str, str], pl.DataFrame], baseline: str) -> dict[str, pl.DataFrame]:
    """Per head method, its agreement minus the baseline's on the same held-out prompt of the same seed."""
    reference = values[(baseline, "agreement")]
    return {method: paired(rows, reference) for (method, metric), rows in values.items()
            if metric == "agreement" and is_head(method)}


def seeds_share_examples(rows: pl.DataFrame) -> bool:
    sets = rows.group_by("seed").agg(pl.col("example_id"))["example_id"].to_list()
    return len({frozenset(s) for s in sets}) == 1


def example_grid(rows: pl.DataFrame, seeds: list[int]) -> np.ndarray:
    """v as (examples sorted by id, seeds in order)."""
    if rows.select("example_id", "seed").is_duplicated().any():
        raise ValueError("a seed holds an example's held-out row twice; re-run heldout")
    wide = rows.pivot(on="seed", index="example_id", values="v").sort("example_id")
    return wide.select(str(s) for s in seeds).to_numpy()


def interval_row(rows: pl.DataFrame, n_resamples: int, seed: int) -> dict:
    """mean and sd over seeds, and both bootstrap intervals, of one per-example value."""
    by_seed = rows.group_by("seed").agg(pl.col("v").fill_nan(None).mean(), n=pl.len()).sort("seed")
    per_seed = by_seed["v"].to_numpy()
    if seeds_share_examples(rows):
        grid = example_grid(rows, by_seed["seed"].to_list())
        low, high = stats.bootstrap_ci(grid.mean(axis=1), n_resamples, seed)
        seeds_low, seeds_high = stats.hierarchical_bootstrap_ci(grid, n_resamples, seed)
        n_heldout = grid.shape[0]
    else:
        low, high = stats.bootstrap_ci(rows["v"].to_numpy(), n_resamples, seed)
        parts = rows.partition_by("seed", as_dict=True)
        groups = [parts[(s,)]["v"].to_numpy() for s in by_seed["seed"].to_list()]
        seeds_low, seeds_high = stats.ragged_hierarchical_bootstrap_ci(groups, n_resamples, seed)
        n_heldout = int(by_seed["n"][0])
    return {
        "mean": float(per_seed.mean()), "sd": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan"),
        "ci_low": low, "ci_high": high, "seeds_ci_low": seeds_low, "seeds_ci_high": seeds_high,
        "n_seeds": len(per_seed), "n_heldout": n_heldout,
    }


def choice_per_seed(rows: pl.DataFrame) -> pl.DataFrame:
    """seed and the choice of its first row that has one, by seed."""
    return rows.group_by("seed").agg(pl.col("choice").drop_nulls().first()).sort("seed")


def describe_choices(rows: pl.DataFrame) -> str:
    """What each seed chose ("seed 0: L23 H2; seed 1: L22 H1"), or the choice once when all agree."""
    per_seed = choice_per_seed(rows)
    if per_seed["choice"].drop_nulls().n_unique() == 1:
        return f"{per_seed['choice'][0]} (every seed)"
    return "; ".join(f"seed {s}: {c}" for s, c in per_seed.iter_rows())


def same_heads(frame: pl.DataFrame) -> dict[str, str]:
    """Head methods that repeat an earlier one: the same head in every seed with the same held-out
    predictions (e.g. the max kernel without position 0 and the label-token kernel), method -> earlier."""
    heads = [m for m in frame["method"].unique(maintain_order=True).to_list() if is_head(m)]
    ordered = {m: of_method(frame, m).sort("seed", "prompt_id", maintain_order=True) for m in heads}
    signature = {m: (tuple(rows["choice"].to_list()), tuple(rows["prediction"].to_list())) for m, rows in ordered.items()}
    out = {}
    for i, method in enumerate(heads):
        earlier = [m for m in heads[:i] if signature[m] == signature[method] and m not in out]
        if earlier:
            out[method] = earlier[0]
    return out


# Per-head numbers of each seed's chosen head that Table 2 shows beside it: from heads.parquet (R^2 of
# its weights on slot and slot x label word) and query_swap.parquet (how far they move with the query).
HEAD_COLUMNS = {"heads": ("r2_slot", "r2_slot_label"), "swap": ("weight_shift", "vote_change")}


def chosen_head_rows(frame: pl.DataFrame, by_name: dict[str, pl.DataFrame | None]) -> list[tuple[tuple[str, str], dict]]:
    """((method, metric), row fields) of each head method's chosen head, mean and sd over seeds of the
    head each seed chose (no interval: these describe the head, they do not score it)."""
    out = []
    for method in (m for m in frame["method"].unique(maintain_order=True).to_list() if is_head(m)):
        kernel = method.removeprefix("head_")
        rows = of_method(frame, method)
        chosen = list(choice_per_seed(rows).iter_rows())
        n_heldout = int(rows.group_by("seed").len().sort("seed")["len"][0])
        for name, metrics in HEAD_COLUMNS.items():
            table = by_name.get(name)
            if table is None or table.is_empty():
                continue
            of_kernel = table.filter(pl.col("kernel") == kernel)
            for metric in metrics:
                indexed = dict(zip(of_kernel.select("seed", "layer", "head").iter_rows(), of_kernel[metric].to_list()))
                values = np.array([indexed[(s, *parse_head(c))] for s, c in chosen], dtype=float)
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


def table2_columns(frame: pl.DataFrame, n_resamples: int, seed: int, by_name: dict[str, pl.DataFrame | None] | None = None) -> dict[str, list]:
    """Columns of TABLE2 from the held-out rows of all seeds (a `seed` column added); `by_name` adds the
    chosen heads' own numbers (HEAD_COLUMNS: heads and query-swap tables of every seed, a `seed` column added)."""
    columns: dict[str, list] = {name: [] for name in tables.TABLE2.names}
    choices = {method: describe_choices(rows) for method, rows in by_method(frame).items()}
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


def health(frame: pl.DataFrame, classes: list[str]) -> dict[str, list]:
    """Columns of HEALTH: per method (and ICL itself) and class, how often it is predicted against how
    often it is the gold label, and its recall, pooled over seeds."""
    first = of_method(frame, frame["method"][0])
    predictions = {"icl": first.with_columns(prediction=pl.col("icl_prediction"))}
    predictions.update(by_method(frame))
    columns: dict[str, list] = {name: [] for name in tables.HEALTH.names}
    for method, rows in predictions.items():
        n = rows.height
        for c, name in enumerate(classes):
            gold, hit = equal("label", pl.lit(c)), equal("prediction", pl.lit(c))
            counts = rows.select(gold=gold.sum(), predicted=hit.sum(), recalled=(gold & hit).sum(),
                                 n_seeds=pl.col("seed").n_unique()).row(0, named=True)
            # shares of integer counts: a correctly rounded division, as the pandas means were
            predicted_share, gold_share = counts["predicted"] / n, counts["gold"] / n
            row = {
                "method": method, "class_index": c, "class_name": name, "predicted": counts["predicted"],
                "gold": counts["gold"], "predicted_share": predicted_share, "gold_share": gold_share,
                "recall": counts["recalled"] / counts["gold"] if counts["gold"] else float("nan"),
                "under_predicted": bool(gold_share > 0 and predicted_share < UNDER_PREDICTED * gold_share),
                "n": n, "n_seeds": counts["n_seeds"],
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


