"""Benchmark: the Theorem 1 check end to end at the default sizes, through the module's functions.

Run from the repository root: `.venv/bin/python benchmarks/theory.py [config.yaml]`. Reads the
`theory:` section of the given config (default: theory_config_snippet.yaml, then config.yaml) and
prints the wall time and the pooled table. Not a test: the time depends on the machine and its load.
"""
from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflow_scripts import theory  # noqa: E402


def load_params(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["theory"]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    root = Path(__file__).resolve().parents[1]
    defaults = [root / "theory_config_snippet.yaml", root / "config.yaml"]
    candidates = [Path(a) for a in sys.argv[1:]] or defaults
    source = next(p for p in candidates if p.is_file() and "theory" in (yaml.safe_load(p.read_text()) or {}))
    params = load_params(source)
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
    print(f"wall time: {elapsed:.1f} s (limit 120 s) for {len(params['hmm_seeds'])} HMMs x {params['n_prompts']} prompts")


if __name__ == "__main__":
    main()
