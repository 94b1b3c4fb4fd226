"""Run one stage function inside a Snakemake job, with everything it says going to the job's log."""
from __future__ import annotations

import contextlib
import importlib
import logging
from pathlib import Path


def run(smk, module: str, function: str) -> None:
    log_path = Path(smk.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        logging.basicConfig(stream=log, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
        try:
            getattr(importlib.import_module(module), function)(smk)
        except Exception:
            logging.exception("rule %s failed", smk.rule)
            raise
