"""The whole DAG through snakemake on a tiny study: a random-weight llama and a toy local task.

One module-scoped run; the tests after it change one thing at a time and check what re-ran.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from workflow_scripts.core import paths, table_io, tables
from workflow_scripts.model import loading
from workflow_scripts.report import costs

from .conftest import REPO, toy_sentiment_rows
from .plans import declared_model_rules, gpu_rules, loaded_modules, planned_resources, rule_stages

pytestmark = pytest.mark.workflow


def snakemake_command(code: Path = REPO) -> list[str]:
    """Snakemake with the workflow of the checkout at `code` (a copy, for the code-change tests)."""
    return [sys.executable, "-m", "snakemake", "-s", str(code / "Snakefile"), "--cores", "2"]


SNAKEMAKE = snakemake_command()


def tiny_config(model_dir: Path, data_file: Path, encoder_dir: Path) -> dict:
    return {
        "study": {"models": ["tiny"], "tasks": ["toy"], "seeds": [0], "settings": ["random"]},
        "models": {"tiny": {"source": "local", "path": str(model_dir)}},
        "tasks": {
            "toy": {
                "source": "local",
                "path": str(data_file),
                "columns": {"text": "text", "label": "label"},
                "classes": ["negative", "positive"],
                "label_map": {"neg": "negative", "pos": "positive"},
                "template": {"input": "Review: {text}\nSentiment:"},
            }
        },
        "prompts": {"n_eval": 8, "k": 4, "pool_size": 40, "content_free": ["N/A", ""]},
        "extraction": {"shard_size": 4, "kv_layers": [0, 1]},
        "analysis": {"n_select": 4, "n_heldout": 4, "probe_folds": 3, "bootstrap_resamples": 200, "query_swap_setting": "swap"},
        "encoder": {"name": "tiny-bert", "source": "local", "path": str(encoder_dir)},
        "settings": {
            "random": {"selection": "random"},
            "sim": {"selection": "similar", "queries": "heldout"},
            "sim_hidden": {"selection": "similar", "similarity": "hidden", "hidden_layer": 1, "queries": "heldout"},
            "symbols": {"labels": "symbols", "queries": "heldout"},
            "order_1": {"order_seed": 1, "queries": "heldout"},
            "swap": {"query_swap": True, "queries": "heldout"},
        },
        "ablations": {
            "retrieval": {"kind": "retrieval", "settings": ["sim", "sim_hidden"]},
            "labels": {"kind": "labels", "settings": ["symbols"]},
            "order": {"kind": "order", "settings": ["order_1"]},
        },
        # 8 heads in the tiny llama: the top 1 and 2 and as many controls.
        "interventions": {"top_m": [1, 2], "random_draws": 2},
        "theory": {
            "hmm_seeds": [0], "n_tasks": 2, "n_states": 6, "n_observations": 12, "n_demos": [1, 2, 4],
            "n_prompts": 8, "sigma_samples": 32, "bootstrap_resamples": 20,
        },
    }


def snakemake(workdir: Path, *args: str, code: Path = REPO) -> subprocess.CompletedProcess:
    """Snakemake on the study in `workdir`, with the workflow of the checkout at `code`."""
    return subprocess.run([*snakemake_command(code), "--directory", str(workdir), *args], capture_output=True, text=True)


def planned_jobs(workdir: Path, *args: str, code: Path = REPO) -> dict[str, int]:
    """Rule -> job count that a dry run would execute now (empty when nothing is to be done)."""
    done = snakemake(workdir, "--dry-run", *args, code=code)
    assert done.returncode == 0, done.stderr + done.stdout
    lines = done.stdout.splitlines()
    if "Job stats:" not in lines:
        return {}
    jobs = {}
    for line in lines[lines.index("Job stats:") + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def mtimes(workdir: Path, pattern: str) -> dict[str, float]:
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in sorted(workdir.glob(pattern))}


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_llama_dir, tiny_bert_dir) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("study")
    data_file = workdir / "toy.csv"
    # One row without a label: dropped with a warning, which the console and the report must show.
    pl.DataFrame([*toy_sentiment_rows(), {"text": "the film is", "label": None}]).write_csv(data_file)
    config = tiny_config(tiny_llama_dir, data_file, tiny_bert_dir)
    write_config(workdir, config)
    started = time.perf_counter()
    done = snakemake(workdir)
    assert done.returncode == 0, done.stderr[-5000:]
    (workdir / "first_run.stderr").write_text(done.stderr)
    print(f"tiny study: {time.perf_counter() - started:.1f} s")
    return workdir, config


def test_full_run_writes_every_stage(study):
    workdir, _ = study
    prompts = table_io.read_table(workdir / paths.prompts("tiny", "toy", 0, "random"), tables.PROMPTS)
    assert prompts.num_rows == 8
    shards = sorted((workdir / paths.prompt_set("tiny", "toy", 0, "random") / "shards").glob("*.parquet"))
    assert [p.name for p in shards] == ["000.parquet", "001.parquet"]
    rows = table_io.read_tables(shards, tables.SHARD)
    assert sorted(rows.column("prompt_id").to_pylist()) == list(range(8))
    assert set(rows.column("n_layers").to_pylist()) == {2} and set(rows.column("n_heads").to_pylist()) == {4}
    heads = table_io.read_table(workdir / paths.analysis("heads.parquet", "tiny", "toy", 0, "random"), tables.HEADS)
    assert heads.num_rows == 2 * 4 * 4  # layers x heads x kernels
    zero_shot = table_io.read_table(workdir / paths.zero_shot("tiny", "toy"), tables.ZERO_SHOT)
    assert zero_shot.num_rows == 8 + 40
    assert table_io.read_table(workdir / paths.embeddings("toy"), tables.EMBEDDINGS).num_rows == 8 + 40
    similarity = table_io.read_table(workdir / paths.analysis("similarity.parquet", "tiny", "toy", 0, "random"), tables.SIMILARITY)
    assert similarity.num_rows == 2 * 4 * 4 * 2  # layers x heads x kernels x (label words, next token)
    probes = table_io.read_table(workdir / paths.analysis("probes.parquet", "tiny", "toy", 0, "random"), tables.PROBES)
    assert probes.num_rows == 2 * 4 * 5 * 2  # layers x heads x offsets x (key, value)
    held = table_io.read_table(workdir / paths.analysis("heldout.parquet", "tiny", "toy", 0, "random"), tables.HELDOUT)
    assert held.num_rows == 4 * 11  # held-out prompts x methods (4 heads, 4 query-free readings, 2 cosine baselines, calibrated ICL)
    # Each prompt of the full set ran its two content-free twins; the held-out sets' prompts none.
    assert all(len(v) == 2 * 2 for v in rows.column("content_free_logits").to_pylist())
    symbols = table_io.read_tables(sorted((workdir / paths.prompt_set("tiny", "toy", 0, "symbols") / "shards").glob("*.parquet")), tables.SHARD)
    assert symbols.column("content_free_logits").null_count == symbols.num_rows
    calibrated = table_io.read_table(workdir / paths.analysis("calibration.parquet", "tiny", "toy", 0, "random"), tables.CALIBRATION)
    assert calibrated.column("prompt_id").to_pylist() == list(range(8))  # every prompt: its twins ran anyway
    icl = dict(zip(rows.column("prompt_id").to_pylist(), rows.column("prediction").to_pylist()))
    assert dict(zip(calibrated.column("prompt_id").to_pylist(), calibrated.column("icl_prediction").to_pylist())).items() <= icl.items()
    table = table_io.read_table(workdir / paths.over_seeds("table2.parquet", "tiny", "toy", "random"), tables.TABLE2)
    assert set(table.column("method").to_pylist()) >= {"icl", "null", "head_max", "kr_encoder", "kr_hidden", "icl_calibrated"}
    assert {"recency", "uniform", "positional", "slot_label"} <= set(table.column("method").to_pylist())
    assert "agreement_gain" in table.column("metric").to_pylist()
    # the query swap keeps each held-out prompt's demonstrations and changes its query
    swapped = table_io.read_table(workdir / paths.prompts("tiny", "toy", 0, "swap"), tables.PROMPTS).to_pylist()
    original = {p["prompt_id"]: p for p in prompts.to_pylist()}
    assert all(p["demo_ids"] == original[p["prompt_id"]]["demo_ids"] for p in swapped)
    assert all(p["example_id"] != original[p["prompt_id"]]["example_id"] for p in swapped)
    shift = table_io.read_table(workdir / paths.analysis("query_swap.parquet", "tiny", "toy", 0, "random"), tables.QUERY_SWAP)
    assert shift.num_rows == 2 * 4 * 4  # layers x heads x kernel readings
    held_ids = set(held.column("prompt_id").to_pylist())
    for setting in ("sim", "sim_hidden", "symbols", "order_1"):
        built = table_io.read_table(workdir / paths.prompts("tiny", "toy", 0, setting), tables.PROMPTS)
        assert set(built.column("prompt_id").to_pylist()) == held_ids  # ablations run on the held-out prompts
    summary = table_io.read_table(workdir / paths.ablation("summary.parquet", "tiny", "order"), tables.ABLATION_SUMMARY)
    assert {"icl_changed", "head_changed", "icl_accuracy"} <= set(summary.column("metric").to_pylist())
    edits = table_io.read_table(workdir / paths.analysis("interventions.parquet", "tiny", "toy", 0, "random"), tables.INTERVENTIONS)
    # 4 held-out prompts x 3 families x (top, 2 random draws, 2 matched draws, bottom) x m in (1, 2)
    assert edits.num_rows == 4 * 3 * 6 * 2 and set(edits.column("prompt_id").to_pylist()) == held_ids
    report = (workdir / paths.report()).read_text()
    assert "## Causal check" in report and "**Head knockout.**" in report
    assert "## Section 4.2 ablations: tiny" in report and "### retrieval (retrieval)" in report
    assert "## tiny / toy / random" in report and "Theorem 1" in report
    assert "## Table 2" in report and "kernel regression on tiny-bert" in report and "**5.4" in report
    assert "**Kernel or query-free reading?**" in report and "Prediction health" in report and "Query dependence" in report
    # The dropped row's warning, atop the report and on the console at the end of the run.
    warning = "task toy: dropping 1 rows without a label"
    assert "## Warnings from the run" in report and warning in report.split("## Table 2")[0]
    assert "warning from this run's jobs" in (workdir / "first_run.stderr").read_text() and warning in (workdir / "first_run.stderr").read_text()
    # Four held-out prompts per seed: too few to read, said at the top instead of a verdict.
    assert "**Too few examples to read:**" in report and "Too few held-out prompts to read" in report
    figures = [f"tiny__toy__random__{name}.png" for name in ("attention", "heads", "similarity", "probes")]
    for figure in figures + [f"tiny__ablation__{name}.png" for name in ("retrieval", "labels", "order")]:
        assert (workdir / paths.report_figure(figure)).stat().st_size > 1000
    assert (workdir / paths.log("extract_shard", "tiny", "toy", "seed0", "random", "000")).is_file()


def test_the_jobs_that_load_the_model_are_the_ones_that_ask_for_gpus(study):
    """Which rules' jobs loaded the model (their logs say so) against which ask for a GPU when the
    whole study is planned, and against the rules declaring model_job_resources."""
    workdir, _ = study
    loaded = {log.relative_to(workdir / paths.LOGS).parts[0] for log in (workdir / paths.LOGS).rglob("*.log")
              if loading.LOADING in log.read_text()}
    done = snakemake(workdir, "--dry-run", "--forceall")
    assert done.returncode == 0, done.stderr[-3000:]
    asking = gpu_rules(planned_resources(done.stdout))
    assert loaded and loaded == asking == declared_model_rules(), (loaded, asking)


def appendix_jobs(report: str) -> dict[str, tuple[str, int]]:
    """Rule -> (its "loads the model" cell, its job count) in the report's appendix, the cost table."""
    rows = [line.split("|")[1:4] for line in report.split(costs.HEADING)[1].splitlines() if line.startswith("| `")]
    return {rule.strip().strip("`"): (model.strip(), int(jobs)) for rule, model, jobs in rows}


def test_every_job_writes_a_benchmark_and_the_appendix_holds_a_row_per_rule(study):
    """Every job of the study (but `all`) has its benchmark file, and the appendix of report.md one
    row per rule that ran with its job count, but for the cost table's own and the report's. A
    benchmark file left by a job no longer in the study (another seed) is not counted."""
    workdir, _ = study
    plan = snakemake(workdir, "--dry-run", "--forceall")
    assert plan.returncode == 0, plan.stderr[-3000:]
    benchmarks = re.findall(r"^ +benchmark: (\S+)$", plan.stdout, flags=re.MULTILINE)
    jobs = planned_jobs(workdir, "--forceall")
    assert len(set(benchmarks)) == len(benchmarks) == sum(jobs.values()) - jobs["all"]
    assert [b for b in benchmarks if not (workdir / b).is_file()] == []
    stray = workdir / paths.benchmark("extract_shard", "tiny", "toy", "seed7", "random", "000")
    stray.parent.mkdir(parents=True)
    shutil.copy(workdir / paths.benchmark("extract_shard", "tiny", "toy", "seed0", "random", "000"), stray)
    try:
        done = snakemake(workdir, "--forcerun", "report_costs")
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        shutil.rmtree(stray.parents[1])
    ran = {rule: n for rule, n in jobs.items() if rule not in ("all", "report", "report_costs")}
    model_rules = declared_model_rules()
    expected = {rule: ("yes" if rule in model_rules else "", n) for rule, n in ran.items()}
    assert appendix_jobs((workdir / paths.report()).read_text()) == expected
    table = pl.read_csv(workdir / costs.TABLE)
    assert table["rule"].to_list()[-1] == "total" and table["jobs"].to_list()[-1] == sum(ran.values())
    assert table["job_seconds"].to_list()[-1] > 0 and table["peak_rss_mib"].to_list()[-1] > 0
    assert planned_jobs(workdir) == {}


def test_rerun_with_nothing_changed_does_nothing_quickly(study):
    workdir, _ = study
    started = time.perf_counter()
    done = snakemake(workdir)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert "Nothing to be done" in done.stdout + done.stderr
    assert elapsed <= 10, f"a no-op rerun took {elapsed:.1f} s"


# Code changes (workflow_scripts/core/code.py): the code and the study are copied, so the edit
# touches neither the repository nor the module's own study.
CODE_PARTS = ["Snakefile", "rules", "workflow_scripts", "schemas", "report", "envs", "profiles", "config.yaml"]


def copy_of_code(target: Path) -> Path:
    target.mkdir()
    for part in CODE_PARTS:
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy2)(REPO / part, target / part)
    return target


def rules_importing(code: Path, module: str) -> set[str]:
    """The rules whose stage module loads `module` when Python imports it: Python's own account of
    the imports, not the fingerprint's reading of them."""
    return {rule for rule, spec in rule_stages(code / "rules").items()
            if f"workflow_scripts.{module}" in loaded_modules(code, spec.split(":")[0])}


def rules_of_outputs(code: Path, workdir: Path, lines: list[str]) -> set[str]:
    """The rules whose jobs write the files among `lines` (Snakemake's --summary names each output's rule)."""
    done = snakemake(workdir, "--summary", code=code)
    assert done.returncode == 0, done.stderr
    rule_of = {line.split("\t")[0]: line.split("\t")[2] for line in done.stdout.splitlines()[1:] if "\t" in line}
    files = [line for line in lines if line in rule_of]
    assert files, lines
    return {rule_of[f] for f in files}


def test_editing_a_module_reruns_exactly_the_jobs_whose_code_imports_it(study, tmp_path):
    assert planned_jobs(study[0]) == {}  # runs before the tests that change the study
    workdir = copy_of(study[0], tmp_path / "study")
    code = copy_of_code(tmp_path / "code")
    assert planned_jobs(workdir, code=code) == {}  # the same code at another path re-runs nothing

    # Comments, docstrings and layout are not code.
    stats = code / "workflow_scripts/core/stats.py"
    stats.write_text('"""Edited docstring."""\n# a new comment\n' + stats.read_text().split('"""', 2)[2])
    assert planned_jobs(workdir, code=code) == {}

    edited = "analysis.query_dependence"
    module = code / "workflow_scripts/analysis/query_dependence.py"
    module.write_text(module.read_text() + "\n\nEDITED = True\n")
    expected = rules_importing(code, edited)
    assert {"reconstruct", "query_swap"} <= expected and "extract_shard" not in expected

    changed = snakemake(workdir, "--list-changes", "code", code=code)
    assert changed.returncode == 0, changed.stderr
    listed = changed.stdout.splitlines()
    study_rules = set(planned_jobs(workdir, "--forceall"))
    assert rules_of_outputs(code, workdir, listed) == expected & study_rules

    planned = planned_jobs(workdir, code=code)
    everything = planned_jobs(workdir, "--forceall")
    assert all(planned[rule] == everything[rule] for rule in expected & study_rules), planned
    assert "extract_shard" not in planned and "prepare_model" not in planned
    # Code is one trigger among several: without it the results stand.
    assert planned_jobs(workdir, "--rerun-triggers", "mtime", "params", "input", code=code) == {}

    done = snakemake(workdir, code=code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert planned_jobs(workdir, code=code) == {}


def test_another_workflow_runs_the_study_as_a_snakemake_module(study, tmp_path):
    assert planned_jobs(study[0]) == {}  # the study is as its config says, which the host runs
    config = yaml.safe_load((study[0] / "config.yaml").read_text())
    host = tmp_path / "host"
    host.mkdir()
    (host / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (host / "Snakefile").write_text(
        'configfile: "study.yaml"\n\n\n'
        "module icl:\n"
        f"    snakefile: {str(REPO / 'Snakefile')!r}\n"
        "    config: config\n\n\n"
        "use rule * from icl as icl_*\n"
    )
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=host, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-5000:]
    report = (host / paths.report()).read_text()
    # The same report, but for the appendix's seconds, which no two runs share: the same rules and jobs there.
    assert report.split(costs.HEADING)[0] == (study[0] / paths.report()).read_text().split(costs.HEADING)[0]
    assert appendix_jobs(report) == appendix_jobs((study[0] / paths.report()).read_text())
    tables_made = sorted((study[0] / "results").rglob("*.parquet"))
    assert len(tables_made) > 20
    for table in tables_made:  # byte for byte (pyarrow's equals has NaN != NaN)
        relative = table.relative_to(study[0])
        assert (host / relative).read_bytes() == table.read_bytes(), relative
    again = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--dry-run"], cwd=host, capture_output=True, text=True)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout


def test_the_notebook_examples_of_docs_results_run_on_the_study(study):
    """docs/results.md's polars examples, run as written from the study folder (their asserts included)."""
    examples = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "results.md").read_text(), re.S)
    assert len(examples) == 3
    done = subprocess.run([sys.executable, "-c", "\n\n".join(examples)], cwd=study[0], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "demonstrations, most label attention in layer" in done.stdout


# What the HTML report must hold: per paper section, each figure and table of a model x task x setting
# (file name, a phrase its caption must contain: the paper's number where there is one).
SET_RESULTS = {
    "5.5 Table 2": {"table2.html": ".797"},
    "5.1 Attention map": {"attention.png": "Fig. 2", "label_mass.html": "label tokens"},
    "5.2 Heads as kernels": {"heads.png": "89.2%", "top_heads.html": "89.2%"},
    "5.3 Prediction similarity": {"similarity.png": "Fig. 4", "similarity_heads.html": "Fig. 3"},
    "5.4 Probes": {"probes.png": "offset 0", "probe_summary.html": "offset"},
}


def report_contents(html: Path) -> tuple[dict, dict, str]:
    """What a Snakemake HTML report embeds: its results (path -> caption, labels, data, ...), its
    categories (section -> subcategory -> paths) and the workflow description."""
    text = html.read_text()

    def embedded(script_id: str, name: str):
        found = re.search(rf'<script id="{script_id}">\s*var {name} = (.*?);\s*</script>', text, re.S)
        assert found, f"{name} is not in {html}"
        return json.loads(found.group(1))

    return embedded("results", "results"), embedded("categories", "categories"), embedded("workflow-desc", "workflow_desc")


def test_html_report_holds_every_figure_and_table_with_its_caption(study, tmp_path):
    workdir, config = study
    # A second setting, so that results of the same figure must stay apart by their labels.
    copy = copy_of(workdir, tmp_path / "study")
    config = {**config, "study": {**config["study"], "settings": ["random", "k2"]}, "settings": {**config["settings"], "k2": {"k": 2}}}
    write_config(copy, config)
    done = snakemake(copy)
    assert done.returncode == 0, done.stderr[-3000:]
    html = tmp_path / "report.html"
    made = snakemake(copy, "--report", str(html))
    assert made.returncode == 0, made.stderr[-3000:]
    results, categories, description = report_contents(html)

    expected = {}  # path -> (section, subcategory, labels, phrase in the caption)
    for section, files in SET_RESULTS.items():
        for name, phrase in files.items():
            for setting in ("random", "k2"):
                labels = {"task": "toy", "setting": setting}
                expected[paths.report_set(name, "tiny", "toy", setting)] = (section, "tiny", labels, phrase)
    for ablation in config["ablations"]:
        for extension, phrase in (("png", "95% CIs"), ("html", "paired difference")):
            expected[paths.report_ablation(extension, "tiny", ablation)] = ("4.2 Ablations", "tiny", {"ablation": ablation}, phrase)
    for name, phrase in (("interventions.png", "random heads"), ("interventions_table.html", "paired difference")):
        expected[paths.report_set(name, "tiny", "toy", "random")] = ("Causal check", "tiny", {"task": "toy", "setting": "random"}, phrase)
    expected[paths.theory("convergence.png")] = ("Theorem 1", "synthetic HMMs", {}, "0.964")
    expected[paths.report_figure("theory.html")] = ("Theorem 1", "synthetic HMMs", {}, "0.964")
    assert set(results) == set(expected)
    for path, (section, subcategory, labels, phrase) in expected.items():
        result = results[path]
        assert path in categories[section][subcategory], path
        assert labels.items() <= result["labels"].items() and result["labels"]["result"], path
        assert phrase in result["caption"] and "system-message" not in result["caption"], (path, result["caption"])
        assert result["data_uri"].startswith(f"data:{result['mime_type']};"), path
        if path.endswith(".html"):  # the table itself, sortable
            page = base64.b64decode(result["data_uri"].split(",", 1)[1]).decode()
            assert "<table>" in page and "<tbody>\n<tr>" in page and "th.addEventListener" in page, path
    # Captions name their model, task and setting; the description gives the study's config.
    caption = results[paths.report_set("heads.png", "tiny", "toy", "k2")]["caption"]
    assert "for tiny on toy, k2 prompts" in caption
    assert "models: tiny" in description and "random, k2" in description and "null baseline" in description


# The rerun contract of docs/reruns.md on the tiny study: each row changes config keys in an overlay
# (merged over the study's config) and names the jobs a dry run then plans. The tiny study has one
# prompt set of every test prompt (random, 2 shards) and four held-out ablation sets (sim, sim_hidden,
# symbols, order_1; one shard each) read by three ablations.
ANALYSES = {"reconstruct": 1, "attention_map": 1, "similarity": 1, "probes": 1, "calibrate": 1, "heldout": 1, "table2": 1}
# The query-swap comparison of a set with random demonstrations and the query-swap setting's k.
SWAP = {"query_swap": 1}
# The report's figures and tables of one model x task x setting (over its seeds).
SET_REPORT = {"report_table2": 1, "report_attention": 1, "report_heads": 1, "report_similarity": 1, "report_probes": 1}
# The report and its appendix, the cost table, which re-runs after any job before it.
REPORT = {"report_costs": 1, "report": 1, "all": 1}
# The causal check of the interventions setting (random) and its figure.
CAUSAL = {"interventions": 1, "report_interventions": 1}
EVERY_SET = {"build_prompts": 6, "extract_shard": 7, **ANALYSES, **SWAP, "ablation": 3, **SET_REPORT, "report_ablation": 3, **CAUSAL, **REPORT}
ONE_NEW_SET = {"build_prompts": 1, "extract_shard": 2, **ANALYSES, **SET_REPORT, **REPORT}
CONTRACT = {
    "extraction.batch_size": ({"extraction": {"batch_size": 3}}, {}),
    "extraction.threads": ({"extraction": {"threads": 2}}, {}),
    "extraction.zero_shot_batch_size": ({"extraction": {"zero_shot_batch_size": 5}}, {}),
    "models.<name>.parameters": ({"models": {"tiny": {"parameters": 7.0}}}, {}),
    "extraction.gpus, device_map, max_memory": ({"extraction": {"gpus": 2, "device_map": "auto", "max_memory": {"0": "1GiB"}}}, {}),
    "report.title": ({"report": {"title": "Another title"}}, {"report": 1, "all": 1}),
    "analysis.top_head_fraction": ({"analysis": {"top_head_fraction": 0.5}}, {"report_heads": 1, **REPORT}),
    "report.dpi": (
        {"report": {"dpi": 60}},
        {"report_attention": 1, "report_heads": 1, "report_similarity": 1, "report_probes": 1, "report_ablation": 3,
         "report_interventions": 1, **REPORT},
    ),
    "analysis.probe_ridge": ({"analysis": {"probe_ridge": 1.0}}, {"probes": 1, "report_probes": 1, **REPORT}),
    "analysis.resample_length": ({"analysis": {"resample_length": 10}}, {"attention_map": 1, "report_attention": 1, **REPORT}),
    "analysis.bootstrap_resamples": (
        {"analysis": {"bootstrap_resamples": 300}},
        {"table2": 1, "ablation": 3, "report_table2": 1, "report_ablation": 3, "report_interventions": 1, **REPORT},
    ),
    "theory.*": ({"theory": {"n_prompts": 6}}, {"theory": 1, "report_theory": 1, **REPORT}),
    "interventions.*": ({"interventions": {"top_m": [1]}}, {**CAUSAL, **REPORT}),
    "interventions.batch_size": ({"interventions": {"batch_size": 2}}, {}),
    "calibration.content_free": (
        {"calibration": {"content_free": [""]}},
        {"calibrate": 1, "heldout": 1, "table2": 1, "report_table2": 1, "ablation": 3, "report_ablation": 3, **REPORT},
    ),
    # Only the full set's twins change: it is rebuilt and re-extracted, no held-out ablation set.
    "prompts.content_free": ({"prompts": {"content_free": ["N/A"]}}, {**EVERY_SET, "build_prompts": 1, "extract_shard": 2}),
    "calibration.enabled": (
        {"calibration": {"enabled": False}}, {"heldout": 1, "table2": 1, "report_table2": 1, "ablation": 3, "report_ablation": 3, **REPORT},
    ),
    "interventions.enabled": ({"interventions": {"enabled": False}}, REPORT),
    "study.ablations": ({"study": {"ablations": []}}, REPORT),
    "tasks.<name>.encoding_errors, max_unmapped_share": ({"tasks": {"toy": {"encoding_errors": "replace", "max_unmapped_share": 0.2}}}, {}),
    "extraction.head_outputs": (
        {"extraction": {"head_outputs": False}, "interventions": {"knockout": "zero"}}, {**EVERY_SET, "build_prompts": 0},
    ),
    # The new seed's random set and its query-swap set.
    "study.seeds (one more)": ({"study": {"seeds": [0, 1]}}, {**ONE_NEW_SET, **SWAP, "build_prompts": 2, "extract_shard": 3, **CAUSAL}),
    "analysis.query_swap_setting": (
        {"analysis": {"query_swap_setting": None}}, {"table2": 1, "report_table2": 1, "report_heads": 1, **REPORT},
    ),
    "study.settings (one more)": ({"study": {"settings": ["random", "k2"]}, "settings": {"k2": {"k": 2}}}, ONE_NEW_SET),
    "ablations.<name>.settings (one more)": (
        {"settings": {"words": {"labels": "words", "queries": "heldout"}}, "ablations": {"labels": {"settings": ["symbols", "words"]}}},
        {"build_prompts": 1, "extract_shard": 1, "ablation": 1, "report_ablation": 1, **REPORT},
    ),
    "study.tasks (one more)": (
        {"study": {"tasks": ["toy", "toy2"]}, "tasks": {"toy2": "like toy"}},
        {"prepare_task": 1, "embed_task": 1, "zero_shot": 1, **EVERY_SET},
    ),
    "study.models (one more)": (
        {"study": {"models": ["tiny", "tiny2"]}, "models": {"tiny2": "like tiny"}},
        {"prepare_model": 1, "zero_shot": 1, **EVERY_SET, "report_models": 1},
    ),
    "prompts.k": ({"prompts": {"k": 3}}, EVERY_SET),
    "extraction.kv_layers": ({"extraction": {"kv_layers": [0]}}, {**EVERY_SET, "build_prompts": 0}),
    "tasks.<name>.template": (
        {"tasks": {"toy": {"template": {"input": "Text: {text}\nSentiment:"}}}}, {"zero_shot": 1, **EVERY_SET},
    ),
    "prompts.split_seed": ({"prompts": {"split_seed": 7}}, {"embed_task": 1, "zero_shot": 1, **EVERY_SET}),
    "prompts.prepend_bos": ({"prompts": {"prepend_bos": True}}, {"zero_shot": 1, **EVERY_SET}),
    # Everything that reads the zero-shot table: the hidden-state retrieval set (sim_hidden), 5.3, 5.4, Table 2.
    "extraction.zero_shot_top_k": (
        {"extraction": {"zero_shot_top_k": 5}},
        {"zero_shot": 1, "build_prompts": 1, "extract_shard": 1, "similarity": 1, "probes": 1, "heldout": 1, "table2": 1,
         "ablation": 3, "report_ablation": 3, "report_similarity": 1, "report_probes": 1, "report_table2": 1, **REPORT},
    ),
    "encoder": (
        {"encoder": {"name": "another-name"}},
        {"prepare_encoder": 1, "embed_task": 1, "build_prompts": 1, "extract_shard": 1, "heldout": 1, "table2": 1,
         "ablation": 3, "report_table2": 1, "report_ablation": 3, **REPORT},
    ),
}


def overlay_for(change: dict, config: dict) -> dict:
    """The overlay, with "like <name>" entries filled in as copies of that task or model."""
    change = yaml.safe_load(yaml.safe_dump(change))
    for section in ("tasks", "models"):
        for name, entry in change.get(section, {}).items():
            if isinstance(entry, str) and entry.startswith("like "):
                change[section][name] = config[section][entry.removeprefix("like ")]
    return change


@pytest.mark.parametrize("row", CONTRACT, ids=list(CONTRACT))
def test_rerun_contract(study, tmp_path, row):
    workdir, config = study
    change, expected = CONTRACT[row]
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(overlay_for(change, config)))
    planned = planned_jobs(workdir, "--configfile", str(workdir / "config.yaml"), str(overlay))
    assert planned == {rule: n for rule, n in expected.items() if n}, row


def copy_of(workdir: Path, target: Path) -> Path:
    """A copy of a finished study (results, logs and Snakemake's metadata) to damage freely."""
    shutil.copytree(workdir, target, symlinks=True)
    return target


def test_killed_extraction_resumes_with_only_the_unfinished_jobs(study, tmp_path):
    workdir, _ = study
    copy = copy_of(workdir, tmp_path / "study")
    shards = [paths.shard("tiny", "toy", 0, "random", s) for s in ("000", "001")]
    for shard in shards:
        (copy / shard).unlink()
    logs = [copy / paths.log("extract_shard", "tiny", "toy", "seed0", "random", s) for s in ("000", "001")]
    for log in logs:
        log.unlink()
    # One job at a time; kill the whole process group (snakemake and its job) once one shard is
    # written and the other's job has started.
    run = subprocess.Popen([*SNAKEMAKE[:-1], "1", "--directory", str(copy), *shards], start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        written = [(copy / s).is_file() for s in shards]
        if sum(written) == 1 and logs[written.index(False)].is_file():
            os.killpg(run.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    run.wait()
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-extraction"
    unfinished = shards[[(copy / s).is_file() for s in shards].index(False)]
    shard_dir = (copy / unfinished).parent
    # The finished shard is kept; the other is absent, not half-written (a write goes through a
    # temporary file, which the rerun's write removes).
    assert sorted(p.name for p in shard_dir.glob("*.parquet")) == [Path(s).name for s in shards if s != unfinished]

    unlocked = snakemake(copy, "--unlock")  # what Snakemake asks for after a kill
    assert unlocked.returncode == 0, unlocked.stderr[-3000:]
    assert planned_jobs(copy, *shards) == {"extract_shard": 1}
    done = snakemake(copy, *shards)
    assert done.returncode == 0, done.stderr[-3000:]
    for shard in shards:
        assert (copy / shard).read_bytes() == (workdir / shard).read_bytes(), shard
    assert not list(shard_dir.glob(".*.tmp"))


def test_damaged_shard_gets_an_error_naming_it_and_the_rebuild_command(study, tmp_path):
    workdir, _ = study
    copy = copy_of(workdir, tmp_path / "study")
    shard = paths.shard("tiny", "toy", 0, "random", "001")
    original = (copy / shard).read_bytes()
    (copy / shard).write_bytes(original[: len(original) // 2])
    done = snakemake(copy, "--keep-going")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert f"{shard} cannot be read as a Parquet table" in output and f"--forcerun {shard}" in output
    rebuilt = snakemake(copy, "--forcerun", shard)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert (copy / shard).read_bytes() == original


def test_adding_a_seed_runs_only_the_new_jobs(study):
    workdir, config = study
    before = mtimes(workdir, "results/tiny/toy/seed0/**/*.parquet")
    config["study"]["seeds"] = [0, 1]
    write_config(workdir, config)
    jobs = planned_jobs(workdir)
    assert jobs.get("extract_shard") == 3 and jobs.get("build_prompts") == 2, jobs  # random and its query swap
    assert "prepare_model" not in jobs and "prepare_task" not in jobs and "theory" not in jobs
    done = snakemake(workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert mtimes(workdir, "results/tiny/toy/seed0/**/*.parquet") == before
    assert (workdir / paths.analysis("heads.parquet", "tiny", "toy", 1, "random")).is_file()
    assert "Seeds: 0, 1" in (workdir / paths.report()).read_text()


def test_changing_a_report_option_reruns_only_the_report(study):
    workdir, config = study
    before = mtimes(workdir, "results/tiny/**/*.parquet")
    config["report"] = {"title": "A retitled study"}
    write_config(workdir, config)
    assert planned_jobs(workdir) == {"report": 1, "all": 1}
    done = snakemake(workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert mtimes(workdir, "results/tiny/**/*.parquet") == before
    assert (workdir / paths.report()).read_text().startswith("# A retitled study")


def test_changing_a_probe_parameter_reruns_only_the_probes_and_the_report(study):
    workdir, config = study
    config["analysis"]["probe_ridge"] = 1.0
    write_config(workdir, config)
    seeds = len(config["study"]["seeds"])
    assert planned_jobs(workdir) == {"probes": seeds, "report_probes": 1, "report_costs": 1, "report": 1, "all": 1}
    done = snakemake(workdir)
    assert done.returncode == 0, done.stderr[-3000:]


def test_changing_the_heldout_size_reruns_table_2_and_the_ablations_only(study):
    workdir, config = study
    before = mtimes(workdir, "results/tiny/toy/seed*/random/**/*.parquet")
    config["analysis"]["n_heldout"] = 3
    write_config(workdir, config)
    seeds = len(config["study"]["seeds"])
    # sim, sim_hidden, symbols, order_1 (seed 0) and every seed's query swap build only the held-out prompts
    heldout_sets = 4 + seeds
    assert planned_jobs(workdir) == {
        "heldout": seeds, "table2": 1, "build_prompts": heldout_sets, "extract_shard": heldout_sets,
        "ablation": 3, "report_table2": 1, "report_ablation": 3, "interventions": seeds, "report_interventions": 1,
        "query_swap": seeds, "report_heads": 1, "report_costs": 1, "report": 1, "all": 1,
    }
    done = snakemake(workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    table = table_io.read_table(workdir / paths.over_seeds("table2.parquet", "tiny", "toy", "random"), tables.TABLE2)
    assert set(table.column("n_heldout").to_pylist()) == {3}
    split = {"heldout", "interventions", "query_swap"}  # the tables the held-out split decides (calibration: every prompt)

    def kept(times: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in times.items() if Path(k).stem not in split}

    assert kept(mtimes(workdir, "results/tiny/toy/seed*/random/**/*.parquet")) == kept(before)


def test_a_held_out_split_per_seed_gives_each_seed_its_own_test_examples(study):
    workdir, config = study
    assert len(config["study"]["seeds"]) == 2  # test_adding_a_seed ran before
    config["analysis"]["heldout_per_seed"] = True
    write_config(workdir, config)
    done = snakemake(workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    held = [set(table_io.read_table(workdir / paths.analysis("heldout.parquet", "tiny", "toy", s, "random"), tables.HELDOUT)
                .column("example_id").to_pylist()) for s in (0, 1)]
    assert held[0] != held[1]
    swap = table_io.read_table(workdir / paths.prompts("tiny", "toy", 1, "swap"), tables.PROMPTS)
    seed1 = table_io.read_table(workdir / paths.analysis("heldout.parquet", "tiny", "toy", 1, "random"), tables.HELDOUT)
    assert set(swap.column("prompt_id").to_pylist()) == set(seed1.column("prompt_id").to_pylist())  # its own split
    report = (workdir / paths.report()).read_text()
    assert "Every seed holds out its own test examples (analysis.heldout_per_seed)" in report
    config["analysis"]["heldout_per_seed"] = False
    write_config(workdir, config)


def test_same_seed_gives_byte_identical_prompts(study, tmp_path):
    workdir, _ = study
    original = workdir / paths.prompts("tiny", "toy", 0, "random")
    copy = original.read_bytes()
    target = paths.prompts("tiny", "toy", 0, "random")
    done = snakemake(workdir, target, "--forcerun", target)
    assert done.returncode == 0, done.stderr[-3000:]
    assert original.read_bytes() == copy


def test_bad_input_stops_before_any_model_runs(tmp_path, tiny_llama_dir, tiny_bert_dir):
    data_file = tmp_path / "toy.csv"
    pl.DataFrame(toy_sentiment_rows()).write_csv(data_file)
    config = tiny_config(tiny_llama_dir, data_file, tiny_bert_dir)
    config["prompts"]["n_eval"] = 70  # 35 per class, but each class has 32 examples
    write_config(tmp_path, config)
    done = snakemake(tmp_path)
    assert done.returncode != 0
    assert "prompts.n_eval=70" in done.stdout + done.stderr
    assert not list(tmp_path.glob("results/**/shards/*.parquet"))


def test_unknown_config_key_fails_at_parse_time(tmp_path, tiny_llama_dir, tiny_bert_dir):
    data_file = tmp_path / "toy.csv"
    pl.DataFrame(toy_sentiment_rows()).write_csv(data_file)
    config = tiny_config(tiny_llama_dir, data_file, tiny_bert_dir)
    config["prompts"]["n_shots"] = 4
    write_config(tmp_path, config)
    done = snakemake(tmp_path, "--dry-run")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "config key 'prompts'" in output and "n_shots" in output
    assert not (tmp_path / "resources").exists()


def test_two_models_get_a_side_by_side_view_in_both_reports(study, tmp_path):
    workdir, config = study
    copy = copy_of(workdir, tmp_path / "study")
    config = {**config, "study": {**config["study"], "models": ["tiny", "tiny2"]},
              "models": {**config["models"], "tiny2": config["models"]["tiny"]}}
    write_config(copy, config)
    done = snakemake(copy)
    assert done.returncode == 0, done.stderr[-3000:]
    text = (copy / paths.report()).read_text()
    view = text.index("## Models side by side: tiny, tiny2")
    assert text.index("### tiny2 / toy / random") < view < text.index("\n## tiny / toy / random")
    assert "| ICL accuracy | " in text[view:] and "### Which findings hold in every model" in text[view:]
    frame = pl.read_csv(copy / paths.report_figure("models.csv"))
    assert set(frame["model"]) == {"tiny", "tiny2"}
    # The same weights twice: every number of one model is the other's.
    pivot = frame.pivot("model", index="row", values="mean", aggregate_function="mean").sort("row")
    np.testing.assert_allclose(pivot["tiny"].to_numpy(), pivot["tiny2"].to_numpy())
    html = tmp_path / "report.html"
    assert snakemake(copy, "--report", str(html)).returncode == 0
    results, categories, _ = report_contents(html)
    assert set(categories["Models side by side"]["every model"]) == {paths.report_figure("models.png"), paths.report_figure("models.html")}
    assert "tiny, tiny2" in results[paths.report_figure("models.html")]["caption"]

