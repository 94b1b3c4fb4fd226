"""Cluster resources sized from the model: parameter counts read from safetensors headers, the
memory and run-time formulas, and what the rules request for a small and a GPT-J-sized model."""
from __future__ import annotations

import json
import re

import pytest

from workflow_scripts.core import resources

from .plans import declared_model_rules, gpu_rules, planned_resources, readme_model_rules
from .test_workflow import REPO, SNAKEMAKE


def test_safetensors_billions_counts_every_weight(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    # Tied embeddings are stored once, as named_parameters lists them.
    expected = sum(p.numel() for _, p in model.named_parameters()) / 1e9
    assert resources.safetensors_billions(tiny_llama_dir) == pytest.approx(expected, rel=1e-12)


def test_model_billions_prefers_measured_then_configured_then_default(tmp_path, tiny_llama_dir):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"path": str(tiny_llama_dir)}))
    measured = resources.safetensors_billions(tiny_llama_dir)
    assert resources.model_billions(manifest, configured=6.05) == measured
    assert resources.model_billions(tmp_path / "missing.json", configured=6.05) == 6.05
    assert resources.model_billions(None, configured=None) == resources.DEFAULT_BILLIONS
    # A manifest whose weights are not safetensors (e.g. a hub repo with .bin only) falls back.
    manifest.write_text(json.dumps({"path": str(tmp_path)}))
    assert resources.model_billions(manifest, configured=8.0) == 8.0


def test_memory_covers_the_weights_and_doubles_on_retry():
    gptj_bf16 = resources.model_mem_mb(6.05, resources.bytes_per_parameter("cuda", "auto"))
    weights_mb = 6.05e9 * 2 / 2**20
    assert weights_mb < gptj_bf16 < 2 * weights_mb
    assert gptj_bf16 % 500 == 0
    assert resources.model_mem_mb(6.05, 4) > gptj_bf16  # float32 on the CPU
    assert resources.model_mem_mb(6.05, 2, attempt=2) >= 2 * gptj_bf16 - 500
    # SmolLM2-135M in float32 fits a small node.
    assert resources.model_mem_mb(0.135, resources.bytes_per_parameter("auto", "auto")) <= 4000


def test_bytes_per_parameter_follows_the_extraction_dtype():
    assert resources.bytes_per_parameter("cpu", "auto") == 4
    assert resources.bytes_per_parameter("auto", "auto") == 4  # sized for the CPU, the larger case
    assert resources.bytes_per_parameter("cuda", "auto") == 2
    assert resources.bytes_per_parameter("cpu", "bfloat16") == 2
    assert resources.bytes_per_parameter("cuda", "float32") == 4


def test_runtime_scales_with_prompts_model_and_threads():
    small = resources.model_runtime_min(0.135, 80, threads=1, device="cpu")
    assert small >= resources.BASE_MINUTES
    assert resources.model_runtime_min(6.05, 80, threads=1, device="cpu") > 10 * small
    assert resources.model_runtime_min(6.05, 80, threads=4, device="cpu") < resources.model_runtime_min(6.05, 80, 1, "cpu")
    assert resources.model_runtime_min(6.05, 80, threads=1, device="cuda") < resources.model_runtime_min(6.05, 80, 1, "cpu")
    assert resources.model_runtime_min(1, 10, 1, "cpu", attempt=2) == 2 * resources.model_runtime_min(1, 10, 1, "cpu")


def test_slurm_job_gpus_reads_the_allocation():
    assert resources.slurm_job_gpus({}) is None
    assert resources.slurm_job_gpus({"SLURM_JOB_ID": "7"}) == 0
    assert resources.slurm_job_gpus({"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "2", "SLURM_JOB_GPUS": "0,1"}) == 2
    assert resources.slurm_job_gpus({"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "3,5,6"}) == 3


def test_table_rows_reads_the_footer(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": list(range(37))}), tmp_path / "t.parquet")
    assert resources.table_rows(tmp_path / "t.parquet", fallback=5) == 37
    assert resources.table_rows(tmp_path / "none.parquet", fallback=5) == 5


@pytest.fixture(scope="module")
def paper_dry_run(tmp_path_factory) -> str:
    """The README's paper-scale command, dry run: no network, no Slurm, no GPU needed to plan it."""
    import os
    import subprocess

    workdir = tmp_path_factory.mktemp("paper")
    done = subprocess.run(
        [*SNAKEMAKE[:-2], "--directory", str(workdir), "--profile", str(REPO / "profiles" / "slurm"),
         "--configfile", str(REPO / "config.yaml"), str(REPO / "config" / "paper_gptj.yaml"), "--dry-run"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    return done.stdout


def test_paper_study_plans_every_stage_for_both_models(paper_dry_run):
    jobs = planned_resources(paper_dry_run)
    seeds, tasks, models = 3, 6, 2
    assert len(jobs["reconstruct"]) == models * tasks * seeds
    assert len(jobs["table2"]) == models * tasks
    assert len(jobs["ablation"]) == models * 5
    # 700 prompts in shards of 350 per random set; 300 held-out prompts (one shard) per ablation set.
    ablation_sets = models * (4 * tasks + 13)
    query_swap_sets = models * tasks * seeds  # the random setting's demonstrations with other held-out queries
    assert len(jobs["extract_shard"]) == models * tasks * seeds * 2 + ablation_sets + query_swap_sets
    assert len(jobs["query_swap"]) == models * tasks * seeds
    assert len(jobs["zero_shot"]) == models * tasks
    assert len(jobs["interventions"]) == models * tasks * seeds
    # The ~450 seconds-long jobs share 13 submissions, against the 182 extraction jobs.
    groups = re.findall(r"Group job (\w+)", paper_dry_run)
    assert len(groups) <= 15 and set(groups) == {"prep", "prompts", "analysis", "figures"}, groups


def test_gpu_profile_requests_a_gpu_for_every_job_that_loads_the_model(paper_dry_run):
    jobs = planned_resources(paper_dry_run)
    model_rules = declared_model_rules()
    assert model_rules and model_rules <= set(jobs), (model_rules, set(jobs))
    for rule, planned in jobs.items():
        gpus = {job.get("gpu") for job in planned}
        assert gpus == ({"1"} if rule in model_rules else {None}), (rule, gpus)
    # Calibration reads the content-free logits the extraction kept: a CPU job, never a GPU's.
    assert "calibrate" in jobs and "calibrate" not in gpu_rules(jobs)
    # Before the models are downloaded they are sized from models.<name>.parameters, in bfloat16:
    # GPT-J-6B (6.05 B) and Llama-3-8B (8.03 B) need their weights' size and less than twice that.
    for rule in model_rules:
        for billions in (6.05, 8.03):
            weights_mb = billions * 1e9 * 2 / 2**20
            assert any(weights_mb < int(job["mem_mb"]) < 2 * weights_mb for job in jobs[rule]), (rule, billions)


def test_the_plan_counts_the_paper_studys_forward_passes(paper_dry_run):
    """benchmarks/gpu_hours.py sums the model jobs' forward_passes; here against the paper config's
    own numbers."""
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("gpu_hours", REPO / "benchmarks" / "gpu_hours.py")
    gpu_hours = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_hours)
    totals = gpu_hours.planned_forwards(paper_dry_run)
    paper = yaml.safe_load((REPO / "config" / "paper_gptj.yaml").read_text())
    sets = len(paper["study"]["tasks"]) * len(paper["study"]["seeds"])
    n_eval, heldout = paper["prompts"]["n_eval"], paper["analysis"]["n_heldout"]
    # Retrieval's 4 settings on every task, 13 more settings (labels 4, typos 3, k 4, order 2) on sst2.
    ablation_sets = 4 * len(paper["study"]["tasks"]) + 13
    for model in paper["study"]["models"]:
        assert totals[(model, "extract_shard")][1] == sets * n_eval + sets * heldout + ablation_sets * heldout
        assert totals[(model, "interventions")] == (sets, 2 * sets * heldout)
    assert {rule for _, rule in totals} == declared_model_rules()


def test_readme_lists_the_model_rules():
    assert readme_model_rules() == declared_model_rules()


def test_cpu_profile_and_a_cpu_device_ask_for_no_gpu(tmp_path):
    """profiles/slurm-cpu lowers every request to none; extraction.device cpu asks for none anywhere."""
    import os
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    base = [*SNAKEMAKE[:-2], "--directory", str(tmp_path), "--configfile", str(REPO / "config.yaml"), "--dry-run"]
    cpu = tmp_path / "cpu.yaml"
    cpu.write_text("extraction: {device: cpu}\n")
    for extra in (["--profile", str(REPO / "profiles" / "slurm-cpu")], ["--configfile", str(REPO / "config.yaml"), str(cpu)]):
        done = subprocess.run([*base, *extra], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        jobs = planned_resources(done.stdout)
        assert declared_model_rules() <= set(jobs)
        assert not gpu_rules(jobs), extra


def test_a_split_model_asks_for_its_gpus(tmp_path):
    import os
    import subprocess

    split = tmp_path / "split.yaml"
    split.write_text("extraction: {gpus: 4, device_map: auto, max_memory: {'0': 70GiB, cpu: 100GiB}}\n")
    done = subprocess.run(
        [*SNAKEMAKE[:-2], "--directory", str(tmp_path), "--profile", str(REPO / "profiles" / "slurm"),
         "--configfile", str(REPO / "config.yaml"), str(split), "--dry-run"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = planned_resources(done.stdout)
    assert {rule: {job.get("gpu") for job in jobs[rule]} for rule in gpu_rules(jobs)} == {rule: {"4"} for rule in declared_model_rules()}
