"""The tiny study submitted to a real one-node Slurm cluster through the CPU cluster profile.

tests/cluster/setup_slurm.sh installs Debian's slurm-wlm and munge when missing and starts a
controller and a node daemon on localhost (root only); the daemons this test started are stopped
after it. Elsewhere it skips, unless REQUIRE_SLURM is set (CI sets it) and it fails instead. Snakemake polls with squeue, since no accounting database runs here.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest

from workflow_scripts.core import paths

from .conftest import REPO, toy_sentiment_rows
from .plans import declared_model_rules, first_outputs
from .test_workflow import SNAKEMAKE, planned_jobs, snakemake, tiny_config, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

CLUSTER = REPO / "tests" / "cluster"
# The rules the Snakefile marks local: they run beside snakemake, never through sbatch.
LOCAL_RULES = {"all", "fetch_task_source", "prepare_model", "prepare_encoder", "report"}
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def can_run_slurm() -> str | None:
    """Why this machine cannot host the test cluster, or None when it can."""
    if shutil.which("sbatch") is None and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        return "Slurm is not installed and installing it needs root and apt-get"
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd needs root"
    return None


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = can_run_slurm()
    if reason and os.environ.get("REQUIRE_SLURM"):
        pytest.fail(f"REQUIRE_SLURM is set but {reason}")
    if reason:
        pytest.skip(reason)
    started = tmp_path_factory.mktemp("slurm") / "started"
    setup = subprocess.run(
        ["bash", str(CLUSTER / "setup_slurm.sh")], env={**os.environ, "SLURM_STARTED": str(started)},
        capture_output=True, text=True,
    )
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    yield
    subprocess.run(["bash", str(CLUSTER / "stop_slurm.sh"), str(started)], check=True)


def submit(workdir: Path, *args: str, profile: str = "slurm-cpu") -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE[:-2], "--directory", str(workdir), "--profile", str(REPO / "profiles" / profile), *args,
         # No accounting database: poll with squeue, and soon (the plugin waits 40 s by default).
         "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5",
         "--slurm-keep-successful-logs"],
        capture_output=True, text=True,
    )


def tres_per_job(job_id: str) -> str:
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    found = re.search(r"TresPerJob=(\S+)", shown)
    return found.group(1) if found else ""


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    out = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i %T", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split() for line in out.splitlines())


def test_tiny_study_runs_through_slurm_and_a_rerun_submits_nothing(slurm, tmp_path, tiny_llama_dir, tiny_bert_dir):
    data_file = tmp_path / "toy.csv"
    pl.DataFrame(toy_sentiment_rows()).write_csv(data_file)
    write_config(tmp_path, tiny_config(tiny_llama_dir, data_file, tiny_bert_dir))
    planned = planned_jobs(tmp_path)

    started = time.perf_counter()
    done = submit(tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    print(f"tiny study through Slurm: {time.perf_counter() - started:.0f} s")
    assert (tmp_path / paths.report()).is_file()

    submissions = SUBMITTED.findall(output)
    job_ids = [job_id for job_id, _ in submissions]
    assert job_ids and set(squeue_states(job_ids).values()) == {"COMPLETED"}, squeue_states(job_ids)
    # Every job of a non-local rule ran inside one of those Slurm jobs: inside a job, snakemake runs
    # each of its rules as a "localrule" and logs it to the plugin's log of that submission.
    ran_in_slurm: dict[str, int] = {}
    for _, log in submissions:
        for rule in re.findall(r"^\[.*\]\nlocalrule (\w+):", Path(log).read_text(), flags=re.M):
            ran_in_slurm[rule] = ran_in_slurm.get(rule, 0) + 1
    remote = {rule: n for rule, n in planned.items() if rule not in LOCAL_RULES}
    assert ran_in_slurm == remote, (ran_in_slurm, remote)
    assert {rule for rule in LOCAL_RULES if rule in planned} <= set(re.findall(r"^localrule (\w+):", output, flags=re.M))
    # Grouping: the seconds-long jobs share submissions, so there are far fewer than jobs.
    assert len(submissions) < sum(remote.values()) / 2, (len(submissions), remote)

    again = submit(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" in again.stdout + again.stderr
    assert not SUBMITTED.search(again.stdout + again.stderr)

    # The GPU profile, unedited: a job of every rule that loads the model, each asking Slurm for a GPU
    # (the test cluster has one pretend GPU); extraction.device auto still runs them on the CPU here.
    plan = snakemake(tmp_path, "--dry-run", "--forceall")
    assert plan.returncode == 0, plan.stderr[-3000:]
    model_rules = declared_model_rules()
    targets = [first_outputs(plan.stdout)[rule] for rule in sorted(model_rules)]
    gpu_run = submit(tmp_path, *targets, "--forcerun", *targets, profile="slurm")
    output = gpu_run.stdout + gpu_run.stderr
    assert gpu_run.returncode == 0, output[-6000:]
    tres = {}
    for job_id, log in SUBMITTED.findall(output):
        rule = re.search(r"slurm_logs/(?:rule_(\w+)|group_)", log).group(1) or "group"
        tres.setdefault(rule, set()).add(tres_per_job(job_id))
    assert {rule: tres[rule] for rule in model_rules if rule in tres} == {rule: {"gres:gpu:1"} for rule in model_rules}, tres
    assert all(t == {""} for rule, t in tres.items() if rule not in model_rules), tres
