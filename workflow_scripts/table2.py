"""Table 2 over seeds: ICL accuracy, and per method the held-out agreement with the ICL prediction
and accuracy against gold, beside the null baseline.

mean and sd are over seeds (each seed is an independent draw of demonstrations). Every seed holds
out the same test examples, so one interval is a bootstrap over those examples of the per-example
statistic averaged over seeds; the other resamples seeds and then examples, so that the variation
between seeds (their demonstrations, the head each chose) counts too.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import schemas, stats

# The paper's GPT-J-6B numbers (Table 2), printed beside ours.
PAPER = {
    "icl accuracy": {"sst2": .805, "mnli": .383, "rotten_tomatoes": .671, "hate": .539, "irony": .519, "offensive": .542},
    "reconstruction agreement": {"sst2": .797, "mnli": .597, "rotten_tomatoes": .683, "hate": .713, "irony": .722, "offensive": .753},
    "reconstructed accuracy": {"sst2": .750, "mnli": .360, "rotten_tomatoes": .527, "hate": .587, "irony": .522, "offensive": .513},
    "KR on all-MiniLM-L6-v2": {"sst2": .503, "mnli": .321, "rotten_tomatoes": .478, "hate": .548, "irony": .491, "offensive": .588},
}


def indicators(frame: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """Per (method, metric), a 0/1 table of held-out examples x seeds."""
    out = {}
    first = frame[frame.method == frame.method.iloc[0]]
    out[("icl", "accuracy")] = first.assign(v=first.icl_prediction == first.label)
    out[("null", "agreement")] = first.assign(v=first.null_prediction == first.icl_prediction)
    out[("null", "accuracy")] = first.assign(v=first.null_prediction == first.label)
    for method, rows in frame.groupby("method", sort=False):
        out[(method, "agreement")] = rows.assign(v=rows.prediction == rows.icl_prediction)
        out[(method, "accuracy")] = rows.assign(v=rows.prediction == rows.label)
    return {key: rows.pivot(index="example_id", columns="seed", values="v").astype(float) for key, rows in out.items()}


def describe_choices(rows: pd.DataFrame) -> str:
    """What each seed chose ("seed 0: L23 H2; seed 1: L22 H1"), or the choice once when all agree."""
    per_seed = rows.groupby("seed").choice.first()
    if per_seed.nunique() == 1:
        return f"{per_seed.iloc[0]} (every seed)"
    return "; ".join(f"seed {s}: {c}" for s, c in per_seed.items())


def summarize(frame: pd.DataFrame, n_resamples: int, seed: int) -> dict[str, list]:
    """Columns of TABLE2 from the held-out rows of all seeds (a `seed` column added)."""
    columns: dict[str, list] = {name: [] for name in schemas.TABLE2.names}
    choices = frame.groupby("method").apply(describe_choices, include_groups=False)
    for (method, metric), grid in indicators(frame).items():
        if grid.isna().any().any():
            raise ValueError(f"method {method}: the seeds held out different examples; prompts.split_seed must be shared")
        per_seed = grid.mean(axis=0).to_numpy()
        low, high = stats.bootstrap_ci(grid.mean(axis=1).to_numpy(), n_resamples, seed)
        seeds_low, seeds_high = stats.hierarchical_bootstrap_ci(grid.to_numpy(), n_resamples, seed)
        row = {
            "method": method, "metric": metric, "mean": float(per_seed.mean()),
            "sd": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan"),
            "ci_low": low, "ci_high": high, "seeds_ci_low": seeds_low, "seeds_ci_high": seeds_high, "n_seeds": grid.shape[1], "n_heldout": grid.shape[0],
            "choices": choices.get(method, ""),
        }
        for name in columns:
            columns[name].append(row[name])
    return columns


def write_table2(heldout_paths: list[str], seeds: list[int], n_resamples: int, seed: int, out: str | Path) -> None:
    frame = pd.concat(
        [schemas.read_table(p, schemas.HELDOUT).to_pandas().assign(seed=s) for p, s in zip(heldout_paths, seeds)],
        ignore_index=True,
    )
    schemas.write_table(summarize(frame, n_resamples, seed), schemas.TABLE2, out)


def from_snakemake(smk) -> None:
    write_table2(list(smk.input), smk.params.seeds, smk.params.bootstrap_resamples, smk.params.bootstrap_seed, smk.output[0])
