"""Where the time goes (workflow_scripts/report/costs.py): the cost table against sums and maxima worked
out here by hand, and, on a toy workflow of shell jobs, that the rule reads the benchmark files of
the study's jobs only. The tiny study's own table is checked in test_workflow.py (its run is reused)."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_scripts.core import paths
from workflow_scripts.report import costs

from .conftest import REPO

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"


def write_benchmark(path: Path, *rows: tuple[str, str, str]) -> str:
    """A Snakemake benchmark file with rows of (s, max_rss, cpu_time); other columns filled in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [HEADER] + [f"{s}\t0:00:01\t{rss}\t900.00\t{rss}\t{rss}\t0.10\t0.20\t55.00\t{cpu}" for s, rss, cpu in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def study_dir(tmp_path, monkeypatch):
    """Hand-made benchmark files in a study folder: three extract_shard jobs (one loads the model), two
    table2 jobs (one too short for Snakemake to sample memory and CPU) and a theory job."""
    monkeypatch.chdir(tmp_path)
    bench = Path(paths.LOGS, "benchmarks")
    jobs = [
        (write_benchmark(bench / "extract_shard/m/t/seed0/random/000.tsv", ("10.50", "812.30", "20.00")), True),
        (write_benchmark(bench / "extract_shard/m/t/seed0/random/001.tsv", ("12.25", "900.10", "23.50")), True),
        (write_benchmark(bench / "extract_shard/m/t/seed1/random/000.tsv", ("7.25", "640.00", "14.00")), True),
        (write_benchmark(bench / "table2/m/t/random.tsv", ("1.50", "310.00", "1.20")), False),
        (write_benchmark(bench / "table2/m/u/random.tsv", ("0.30", "NA", "NA")), False),
        (write_benchmark(bench / "theory.tsv", ("4.00", "120.50", "3.90")), False),
    ]
    return [{"benchmark": b, "loads_model": m} for b, m in jobs]


def test_the_table_sums_and_maxes_each_rules_jobs(study_dir):
    measured, missing = costs.measure(study_dir)
    assert missing == []
    table = costs.cost_table(measured)
    by_rule = {row["rule"]: row for row in table}
    assert [row["rule"] for row in table] == ["extract_shard", "theory", "table2", "total"]  # most job-seconds first
    total = 10.50 + 12.25 + 7.25 + 1.50 + 0.30 + 4.00
    shards = by_rule["extract_shard"]
    assert shards["jobs"] == 3 and shards["loads_model"] is True
    assert shards["job_seconds"] == pytest.approx(30.0)
    assert shards["mean_seconds"] == pytest.approx(10.0) and shards["max_seconds"] == pytest.approx(12.25)
    assert shards["cpu_seconds"] == pytest.approx(57.5) and shards["peak_rss_mib"] == pytest.approx(900.10)
    assert shards["share"] == pytest.approx(30.0 / total)
    # The unsampled job counts in the seconds, not in CPU time or memory.
    table2 = by_rule["table2"]
    assert table2["jobs"] == 2 and table2["loads_model"] is False
    assert table2["job_seconds"] == pytest.approx(1.80) and table2["mean_seconds"] == pytest.approx(0.90)
    assert table2["max_seconds"] == pytest.approx(1.50)
    assert table2["cpu_seconds"] == pytest.approx(1.20) and table2["peak_rss_mib"] == pytest.approx(310.00)
    everything = by_rule["total"]
    assert everything["jobs"] == 6 and everything["loads_model"] is None
    assert everything["job_seconds"] == pytest.approx(total) and everything["share"] == pytest.approx(1.0)
    assert everything["mean_seconds"] == pytest.approx(total / 6) and everything["max_seconds"] == pytest.approx(12.25)
    assert everything["cpu_seconds"] == pytest.approx(20.00 + 23.50 + 14.00 + 1.20 + 3.90)
    assert everything["peak_rss_mib"] == pytest.approx(900.10)
    assert sum(row["share"] for row in table[:-1]) == pytest.approx(1.0)


def test_a_benchmark_of_a_job_not_in_the_study_is_not_read(study_dir):
    """A file an earlier config's job left (seed 9) lies beside the study's, and one study job has none."""
    write_benchmark(Path(paths.benchmark("extract_shard", "m", "t", "seed9", "random", "000")), ("1000.0", "99999.0", "1000.0"))
    absent = {"benchmark": paths.benchmark("heldout", "m", "t", "seed0", "random"), "loads_model": False}
    measured, missing = costs.measure([*study_dir, absent])
    table = {row["rule"]: row for row in costs.cost_table(measured)}
    assert missing == [absent["benchmark"]] and "heldout" not in table
    assert table["extract_shard"]["jobs"] == 3 and table["extract_shard"]["max_seconds"] == pytest.approx(12.25)
    assert table["total"]["peak_rss_mib"] == pytest.approx(900.10)
    lines = costs.cost_lines(costs.cost_table(measured), missing, costs.TABLE)
    assert "1 jobs of the study have no benchmark file" in "\n".join(lines) and "heldout" in lines[-4]


def test_the_piece_and_the_csv_hold_one_row_per_rule_and_the_total(study_dir, tmp_path):
    table = costs.cost_table(costs.measure(study_dir)[0])
    lines = costs.cost_lines(table, [], costs.TABLE)
    assert lines[0] == costs.HEADING and "report/report.tsv" in "\n".join(lines)  # the report's own is named
    rows = [line for line in lines if line.startswith(("| `", "| **"))]
    assert [row.split("|")[1].strip() for row in rows] == ["`extract_shard`", "`theory`", "`table2`", "**total**"]
    assert rows[0].split("|")[2].strip() == "yes" and rows[1].split("|")[2].strip() == ""
    assert rows[0].split("|")[5].strip() == f"{100 * 30.0 / 35.8:.1f}%"
    costs.write_csv(table, tmp_path / "costs.csv")
    with open(tmp_path / "costs.csv", newline="") as handle:
        read = list(csv.DictReader(handle))
    assert tuple(read[0]) == costs.COLUMNS and [r["rule"] for r in read] == ["extract_shard", "theory", "table2", "total"]
    assert float(read[0]["job_seconds"]) == pytest.approx(30.0) and read[-1]["loads_model"] == ""


def test_rule_of_reads_the_benchmark_folder():
    assert costs.rule_of(paths.benchmark("extract_shard", "m", "t", "seed0", "random", "000")) == "extract_shard"
    assert costs.rule_of(paths.benchmark("theory")) == "theory"
    with pytest.raises(ValueError, match="not a benchmark file"):
        costs.rule_of("logs/extract_shard/m.log")


# A toy workflow of shell jobs, wired like the study's: parts -> summary -> report.md, the cost table
# between the report's inputs and the report, its jobs found by costs.study_benchmarks.
TOY = """
import sys
sys.path.insert(0, {repo!r})
from types import SimpleNamespace
from workflow_scripts.core import paths
from workflow_scripts.report import costs


rule all:
    input: paths.report()


rule part:
    output: "results/part/{{i}}.txt"
    benchmark: paths.benchmark("part", "{{i}}")
    resources: forward_passes=1
    shell: "echo {{wildcards.i}} > {{output}}"


rule summary:
    input: expand("results/part/{{i}}.txt", i=config["parts"])
    output: "results/summary.txt"
    benchmark: paths.benchmark("summary")
    shell: "cat {{input}} > {{output}}"


rule report_costs:
    input: lambda wildcards: costs.report_inputs(workflow.rules)
    output: csv=costs.TABLE, piece=costs.PIECE
    params: jobs=lambda wildcards: costs.study_benchmarks(workflow.rules)
    benchmark: paths.benchmark("report_costs")
    run: costs.from_snakemake(SimpleNamespace(params=params, output=output))


rule report:
    input: summary="results/summary.txt", costs=costs.PIECE
    output: paths.report()
    benchmark: paths.benchmark("report", "report")
    shell: "cat {{input}} > {{output}}"
"""


def toy_run(workdir: Path, parts: list[int]) -> subprocess.CompletedProcess:
    (workdir / "config.yaml").write_text(yaml.safe_dump({"parts": parts}))
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "config.yaml"],
                          cwd=workdir, capture_output=True, text=True, check=False)


def table_of(workdir: Path) -> dict[str, dict]:
    with open(workdir / costs.TABLE, newline="") as handle:
        return {row["rule"]: row for row in csv.DictReader(handle)}


def test_the_rule_reads_the_benchmarks_of_the_current_study_only(tmp_path):
    (tmp_path / "Snakefile").write_text(TOY.format(repo=str(REPO)))
    done = toy_run(tmp_path, [1, 2, 3])
    assert done.returncode == 0, done.stderr[-3000:]
    table = table_of(tmp_path)
    assert set(table) == {"part", "summary", "total"}  # not the table's own job, not the report's
    assert table["part"]["jobs"] == "3" and table["part"]["loads_model"] == "True"
    assert table["summary"]["loads_model"] == "False" and table["total"]["jobs"] == "4"
    assert costs.HEADING in (tmp_path / paths.report()).read_text()
    # Part 3 leaves the study; its benchmark file stays on disk, and the table re-runs without it.
    assert (tmp_path / paths.benchmark("part", "3")).is_file()
    done = toy_run(tmp_path, [1, 2])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "report_costs" in done.stderr
    assert table_of(tmp_path)["part"]["jobs"] == "2" and table_of(tmp_path)["total"]["jobs"] == "3"
