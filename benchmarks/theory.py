"""Benchmark: the Theorem 1 check end to end at the default sizes, through the module's functions.

Run from the repository root: `.venv/bin/python benchmarks/theory.py [config.yaml]`. Reads the
`theory:` section of the given config (default: theory_config_snippet.yaml, then config.yaml), fills
the schema's defaults and prints the wall time and the summary. Not a test: the time depends on the
machine and its load.

`--sweep` instead explores HMM constructions (shared / block, leakage, Dirichlet concentrations) on
fewer HMMs and prompts and prints, per construction, the agreement at each n (paper's kernel /
constant kernel), the posterior's mass on the true task and the mean absolute difference to the
paper's Table 3: the evidence behind the default `theory.variants`.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflow_scripts.core.config import theory_defaults  # noqa: E402
from workflow_scripts.theory import study as theory  # noqa: E402
from workflow_scripts.theory.operator_kernel import PRIMARY_KERNEL  # noqa: E402
from workflow_scripts.theory.variants import aggregate_rows, variant_rows  # noqa: E402
from workflow_scripts.theory.verdicts import match_distance  # noqa: E402

SWEEP_SIZES = dict(hmm_seeds=[0, 1, 2], n_prompts=100, bootstrap_resamples=50)
SWEEP_CONCENTRATIONS = (0.03, 0.1, 0.3, 1.0)
SWEEP_LEAKAGE = (0.0, 0.1)


def load_params(path: Path) -> dict:
    return theory_defaults(yaml.safe_load(path.read_text()).get("theory") or {})


def sweep_variants(
    transitions: list[float], emissions: list[float], leakages: list[float], shared: bool
) -> dict[str, dict]:
    """Every construction of the sweep grid, named by its settings."""
    variants = {}
    for transition, emission in itertools.product(transitions, emissions):
        priors = dict(transition_concentration=transition, emission_concentration=emission)
        if shared:
            variants[f"shared_t{transition:g}_e{emission:g}"] = dict(construction="shared", **priors)
        for leakage in leakages:
            variants[f"block_l{leakage:g}_t{transition:g}_e{emission:g}"] = dict(construction="block", leakage=leakage, **priors)
    return variants


def sweep(params: dict, variants: dict[str, dict]) -> None:
    params = {**params, **SWEEP_SIZES, "kernels": [PRIMARY_KERNEL, "constant"], "variants": variants}
    started = time.perf_counter()
    rows = theory.run_variants(params)
    n_grid = sorted(params["n_demos"])
    print(f"agreement at n = {n_grid} (paper's kernel / constant); true-task mass at n = 32; mean |ours - paper|")
    scores = []
    for name in params["variants"]:
        ours = variant_rows(rows, name)
        kernel, constant = (aggregate_rows(ours, k) for k in (PRIMARY_KERNEL, "constant"))
        agreement = " ".join(f"{a['agreement_mean']:.2f}/{c['agreement_mean']:.2f}" for a, c in zip(kernel, constant))
        mass = next((r["true_task_posterior_mean"] for r in kernel if r["n_demos"] == 32), float("nan"))
        distance = match_distance(ours, PRIMARY_KERNEL)
        scores.append((distance, name))
        print(f"{name:28s} {agreement}  mass {mass:.2f}  match {distance:.3f} (constant {match_distance(ours, 'constant'):.3f})")
    print("closest:", ", ".join(f"{name} {d:.3f}" for d, name in sorted(scores)[:5]))
    print(f"wall time: {time.perf_counter() - started:.1f} s for {len(params['variants'])} constructions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", type=Path)
    parser.add_argument("--sweep", action="store_true", help="explore constructions instead of timing the config")
    parser.add_argument("--transition", type=float, nargs="+", default=SWEEP_CONCENTRATIONS, help="sweep: transition concentrations")
    parser.add_argument("--emission", type=float, nargs="+", default=SWEEP_CONCENTRATIONS, help="sweep: emission concentrations")
    parser.add_argument("--leakage", type=float, nargs="+", default=SWEEP_LEAKAGE, help="sweep: leakages of the block constructions")
    parser.add_argument("--no-shared", dest="shared", action="store_false", help="sweep: block constructions only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    root = Path(__file__).resolve().parents[1]
    candidates = [args.config] if args.config else [root / "theory_config_snippet.yaml", root / "config.yaml"]
    source = next(p for p in candidates if p.is_file() and "theory" in (yaml.safe_load(p.read_text()) or {}))
    params = load_params(source)
    if args.sweep:
        sweep(params, sweep_variants(args.transition, args.emission, args.leakage, args.shared))
        return
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        smk = SimpleNamespace(
            params=SimpleNamespace(theory=params),
            output=SimpleNamespace(
                table=str(out / "table.parquet"),
                figure=str(out / "convergence.png"),
                summary=str(out / "summary.md"),
            ),
        )
        started = time.perf_counter()
        theory.from_snakemake(smk)
        elapsed = time.perf_counter() - started
        print((out / "summary.md").read_text())
    print(f"config: {source}")
    print(f"wall time: {elapsed:.1f} s for {len(params['hmm_seeds'])} HMMs x {params['n_prompts']} prompts "
          f"x {len(params['variants']) or 1} constructions")


if __name__ == "__main__":
    main()
