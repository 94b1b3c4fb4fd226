"""Where the time goes: job-seconds and peak memory per rule, read from Snakemake's benchmark file of
each of the study's jobs (logs/benchmarks/{rule}/....tsv, core/paths.py), for the appendix of
results/report.md.

Which jobs are the study's is the workflow's answer, not a listing of logs/: `study_jobs` walks the
rules from results/report.md down as Snakemake does when it builds the DAG (each file's producing
rule, its wildcards, its inputs), so a benchmark file left by a job of an earlier config is never
read. rules/report.smk imports this module, so every Snakemake run loads it: it imports nothing
Snakemake has not loaded already (numpy, no polars).
"""
from __future__ import annotations

import csv
import logging
import math
import os
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from workflow_scripts.core import paths

log = logging.getLogger(__name__)

TABLE = paths.report_figure("costs.csv")
PIECE = paths.report_figure("costs.md")
BENCHMARKS = Path(paths.LOGS, "benchmarks")
# The resource that model_job_resources (rules/common.smk) gives the rules that load the studied
# model, and only those (benchmarks/gpu_hours.py sums it): their mark here too.
MODEL_RESOURCE = "forward_passes"
COLUMNS = ("rule", "loads_model", "jobs", "job_seconds", "share", "mean_seconds", "max_seconds", "cpu_seconds",
           "peak_rss_mib")
TOTAL = "total"
HEADING = "## Appendix: where the time goes"


def study_jobs(rules: Iterable, target: str = paths.report(), skip: Iterable[str] = (TABLE, PIECE)) -> list[tuple]:
    """(rule, wildcards, inputs) of every job that `target` needs, its own job first, found as Snakemake
    finds them: the one rule that makes a file (by its outputs, logs and benchmark), the wildcards the
    file gives it, the inputs it then asks for, down to the files no rule makes. The files in `skip`
    (the cost table's own) are not followed."""
    rules = [rule for rule in rules if rule.has_products()]
    jobs, seen, todo = {}, set(skip), deque([target])
    while todo:
        file = todo.popleft()
        if file in seen:
            continue
        seen.add(file)
        producers = [rule for rule in rules if rule.is_producer(file)]
        if len(producers) > 1:
            raise ValueError(f"{file}: more than one rule makes it ({', '.join(r.name for r in producers)})")
        if not producers:
            if file == target:
                raise ValueError(f"no rule makes {target}, so the study's jobs cannot be found")
            continue
        rule = producers[0]
        wildcards = dict(rule.get_wildcards(file))
        key = (rule.name, tuple(sorted(wildcards.items())))
        if key not in jobs:
            inputs = [str(f) for f in rule.expand_input(wildcards)[0]]
            jobs[key] = (rule, wildcards, inputs)
            todo.extend(inputs)
    return list(jobs.values())


def report_inputs(rules: Iterable, target: str = paths.report(), skip: Iterable[str] = (TABLE, PIECE)) -> list[str]:
    """The inputs of the job that makes `target` (the report) but the cost table's own: every other job
    of the study runs before them."""
    return [f for f in study_jobs(rules, target, skip)[0][2] if f not in set(skip)]


def rule_of(benchmark: str | Path) -> str:
    """The rule a benchmark file belongs to, as paths.benchmark names it (a module's rule prefix aside):
    the folder under logs/benchmarks/, or the file's stem for a rule without wildcards."""
    path = Path(benchmark)
    parts = path.parts
    if parts[: len(BENCHMARKS.parts)] != BENCHMARKS.parts or len(parts) < len(BENCHMARKS.parts) + 1 or path.suffix != ".tsv":
        raise ValueError(f"{benchmark}: not a benchmark file of paths.benchmark ({BENCHMARKS}/<rule>/...tsv)")
    return path.stem if len(parts) == len(BENCHMARKS.parts) + 1 else parts[len(BENCHMARKS.parts)]


def study_benchmarks(rules: Iterable, target: str = paths.report(), skip: Iterable[str] = (TABLE, PIECE)) -> list[dict]:
    """{benchmark, loads_model} of every job that `target` needs but its own (that job runs after the
    table is made), sorted by benchmark file."""
    found = {}
    for rule, wildcards, _ in study_jobs(rules, target, skip)[1:]:
        if rule.benchmark:
            benchmark = str(rule.expand_benchmark(wildcards))
            found[benchmark] = {"benchmark": benchmark, "loads_model": MODEL_RESOURCE in rule.resources}
    return [found[b] for b in sorted(found)]


def read_benchmark(path: str | Path) -> dict:
    """One job's benchmark file: its wall seconds and CPU seconds (summed over its rows, when a rule
    repeats its benchmark) and its peak resident memory in MiB. CPU time and memory are None where
    Snakemake sampled nothing (it writes NA for a job shorter than its sampling interval)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows or "s" not in rows[0]:
        raise ValueError(f"{path}: not a Snakemake benchmark file (no rows, or no column s)")

    def values(column: str) -> list[float]:
        return [float(row[column]) for row in rows if row.get(column) not in (None, "", "NA", "-")]

    cpu, rss = values("cpu_time"), values("max_rss")
    return {"seconds": float(sum(values("s"))), "cpu_seconds": float(sum(cpu)) if cpu else None,
            "peak_rss_mib": float(max(rss)) if rss else None}


def measure(jobs: list[dict]) -> tuple[list[dict], list[str]]:
    """The measured jobs (rule, loads_model and read_benchmark's numbers), and the benchmark files
    that are missing (jobs that ran before their rule recorded one)."""
    measured, missing = [], []
    for job in jobs:
        if Path(job["benchmark"]).is_file():
            measured.append({"rule": rule_of(job["benchmark"]), "loads_model": bool(job["loads_model"]),
                             **read_benchmark(job["benchmark"])})
        else:
            missing.append(job["benchmark"])
    return measured, missing


def summary_row(rule: str, loads_model: bool | None, jobs: list[dict], grand_total: float) -> dict:
    seconds = np.array([job["seconds"] for job in jobs], dtype=float)
    cpu = [job["cpu_seconds"] for job in jobs if job["cpu_seconds"] is not None]
    rss = [job["peak_rss_mib"] for job in jobs if job["peak_rss_mib"] is not None]
    return {
        "rule": rule, "loads_model": loads_model, "jobs": len(jobs), "job_seconds": float(seconds.sum()),
        "share": float(seconds.sum() / grand_total) if grand_total > 0 else None,
        "mean_seconds": float(seconds.mean()), "max_seconds": float(seconds.max()),
        "cpu_seconds": float(np.sum(cpu)) if cpu else None, "peak_rss_mib": float(np.max(rss)) if rss else None,
    }


def cost_table(measured: list[dict]) -> list[dict]:
    """One row per rule (most job-seconds first), then the total row: jobs, job-seconds (the sum of
    their wall seconds) and its share of the total, mean and max seconds per job, CPU seconds, peak
    resident memory (MiB), and whether the rule loads the studied model."""
    by_rule: dict[str, list[dict]] = {}
    for job in measured:
        by_rule.setdefault(job["rule"], []).append(job)
    grand_total = float(sum(job["seconds"] for job in measured))
    rows = [summary_row(rule, any(job["loads_model"] for job in jobs), jobs, grand_total) for rule, jobs in by_rule.items()]
    rows.sort(key=lambda row: (-row["job_seconds"], row["rule"]))
    return [*rows, summary_row(TOTAL, None, measured, grand_total)] if measured else []


def number(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def cost_lines(table: list[dict], missing: list[str], table_file: str) -> list[str]:
    """The appendix of results/report.md: what the numbers are, the table, and which jobs it lacks."""
    lines = [
        HEADING, "",
        ("Job-seconds and peak memory per rule, from Snakemake's benchmark file of each of the study's jobs "
         f"(`{BENCHMARKS}/<rule>/<wildcards>.tsv`). *Job-seconds* add up every job's wall time: jobs that ran side by "
         "side count in full, so the total exceeds the run's elapsed time on several cores. *Peak RSS* is the largest "
         "resident memory of any job of the rule, sampled by Snakemake (none for jobs shorter than its sampling "
         "interval). A job that did not re-run in the latest run keeps the numbers of its last run. *Loads the model* marks the "
         "rules that load the studied model (their resources come from `model_job_resources`: the GPU jobs on a "
         "cluster). Two jobs cannot be in the table: the one that makes it (its benchmark is written when it ends) and "
         "the report rule's, which assembles this file after the table is made (their benchmarks are "
         f"`{paths.benchmark('report_costs')}` and `{paths.benchmark('report', 'report')}`)."), "",
    ]
    if table:
        lines += ["| Rule | Loads the model | Jobs | Job-seconds | Share | Mean s / job | Max s / job | CPU seconds | Peak RSS (MiB) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for row in table:
            name = f"**{row['rule']}**" if row["rule"] == TOTAL else f"`{row['rule']}`"
            share = "–" if row["share"] is None else f"{100 * row['share']:.1f}%"
            lines.append(f"| {name} | {'yes' if row['loads_model'] else ''} | {row['jobs']} | {number(row['job_seconds'])} "
                         f"| {share} | {number(row['mean_seconds'], 2)} | {number(row['max_seconds'], 2)} "
                         f"| {number(row['cpu_seconds'])} | {number(row['peak_rss_mib'], 0)} |")
        lines.append("")
    else:
        lines += ["No job of the study has a benchmark file yet.", ""]
    if missing:
        rules = sorted({rule_of(b) for b in missing})
        lines += [(f"{len(missing)} jobs of the study have no benchmark file (they ran before their rule recorded one) "
                   f"and are not in the table: {', '.join(rules)}."), ""]
    return [*lines, f"Table: [{Path(table_file).name}]({os.path.relpath(table_file, Path(paths.report()).parent)})", ""]


def write_csv(table: list[dict], path: str | Path) -> None:
    """The table as CSV: numbers in full, missing values empty."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: "" if row[key] is None else row[key] for key in COLUMNS} for row in table)


def from_snakemake(smk) -> None:
    measured, missing = measure(list(smk.params.jobs))
    log.info("read %d benchmark files of %d study jobs (%d missing)", len(measured), len(smk.params.jobs), len(missing))
    table = cost_table(measured)
    write_csv(table, smk.output.csv)
    Path(smk.output.piece).write_text("\n".join(cost_lines(table, missing, smk.output.csv)) + "\n")
