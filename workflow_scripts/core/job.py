"""Run one stage function inside a Snakemake job, with everything it says going to the job's log."""
from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import sys
import threading
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
    if getattr(sys.modules.get("__main__"), "snakemake", None) is smk:
        end_process()


def end_process() -> None:
    """End the job's process now that its outputs are written and its log is closed, without Python's
    teardown of every module it imported: about 1 s once torch and transformers are loaded, a tenth
    of that for an analysis job (benchmarks/startup.py, column exit). Exit handlers run as at a normal
    exit (logging, weakref finalizers, temporary folders), the standard streams are flushed, the exit
    status is 0. Only the entry script's job ends so (run: its `__main__` holds the job's snakemake
    object), and a process that still runs other threads ends the normal way, which waits for them."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)
