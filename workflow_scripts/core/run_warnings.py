"""The warnings a run's stages logged, gathered from the job logs.

A job's console output goes to its log (core/job.py), so a warning a stage logs (a shrunken
demonstration pool, dropped labels) would otherwise stay there, unread. The report lists every
warning of the study's logs at its top, and at the end of a run Snakemake prints those of the jobs
that ran (rules/report.smk, onsuccess / onerror). Only the workflow's own loggers count: library
warnings (transformers, torch) stay in the logs.
"""
from __future__ import annotations

import re
from pathlib import Path

# core/job.py's format: "%(asctime)s %(name)s %(levelname)s %(message)s".
LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,.]+ (workflow_scripts[\w.]*) WARNING (.*)$")


def log_warnings(log: Path) -> list[str]:
    """The workflow's WARNING messages in one job log, in order, each once."""
    found = [m.group(2) for m in map(LINE.match, log.read_text(errors="replace").splitlines()) if m]
    return list(dict.fromkeys(found))


def study_warnings(logs: str | Path, since: float | None = None, skip: tuple[str, ...] = ("report",)) -> list[tuple[str, str]]:
    """(log path, message) of every warning in the logs under `logs` (only logs written at or after
    `since`, a time.time(), when given), skipping the logs of the rules in `skip`."""
    root = Path(logs)
    by_message: dict[str, list[str]] = {}
    for log in sorted(root.rglob("*.log")) if root.is_dir() else []:
        if log.relative_to(root).parts[0] in skip or (since is not None and log.stat().st_mtime < since):
            continue
        for message in log_warnings(log):
            by_message.setdefault(message, []).append(str(log))
    # Several jobs read the same data (a shrunken pool is seen by every prompt job): one line each.
    return [(logs[0] + (f" (and {len(logs) - 1} more)" if len(logs) > 1 else ""), message)
            for message, logs in by_message.items()]


def warning_lines(warnings: list[tuple[str, str]]) -> list[str]:
    """The report's section of warnings (none: no section)."""
    if not warnings:
        return []
    return ["## Warnings from the run", "",
            "The jobs logged these; each may change how the numbers below read.", "",
            *[f"- `{log}`: {message}" for log, message in warnings], ""]


def console_text(warnings: list[tuple[str, str]]) -> str:
    """What the end of a run prints (empty: nothing to print)."""
    if not warnings:
        return ""
    body = "\n".join(f"  {log}: {message}" for log, message in warnings)
    return f"{len(warnings)} warning{'s' if len(warnings) != 1 else ''} from this run's jobs (also at the top of the report):\n{body}"
