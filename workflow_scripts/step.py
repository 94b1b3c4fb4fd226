"""The one script every rule runs: set up the job's log, then call its stage's from_snakemake.

Snakemake runs this file in a fresh Python process with a `snakemake` object in scope.
"""
import contextlib
import importlib
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_scripts.stages import STAGES  # noqa: E402


def run(smk) -> None:
    log_path = Path(smk.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        logging.basicConfig(stream=log, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
        try:
            importlib.import_module(f"workflow_scripts.{STAGES[smk.rule]}").from_snakemake(smk)
        except Exception:
            logging.exception("rule %s failed", smk.rule)
            raise


run(snakemake)  # noqa: F821  (injected by Snakemake)
