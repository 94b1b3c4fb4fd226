"""What a study costs in model time, from its dry-run plan and a per-prompt cost measured here.

    python benchmarks/gpu_hours.py                                   # the paper's study, config/paper_gptj.yaml
    python benchmarks/gpu_hours.py --configfile config/paper_size.yaml

1. The plan: `snakemake --profile profiles/slurm --dry-run` of the study (no network, no Slurm);
   every job that loads the model carries a `forward_passes` resource (rules/common.smk), summed
   here per model and rule.
2. The measured cost: prompts of the finished default study (results/) through the capture engine
   as extraction runs them, on this machine's CPU in float32 (--threads), give seconds per prompt
   and tokens per prompt, i.e. the CPU's achieved FLOP rate at 2 x parameters x tokens per forward.
3. Printed per model: forward passes, the CPU-hours at that measured rate (a CPU-based estimate:
   cost scaled by parameters and by --tokens per prompt), and GPU-hours at an assumed share
   (--utilization) of a GPU's dense bf16 peak (--gpu-tflops). The GPU figure is an assumption, not a
   measurement, until benchmarks/gpu_check.sh has run on a GPU; model loading (about a minute per
   job for 6-8B) is added per job.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

JOB = re.compile(r"^ *rule (\w+):\n(?: +.*\n)*? +wildcards: (.*)\n(?: +.*\n)*? +resources: (.*)$", re.M)


def dry_run(configfiles: list[str]) -> str:
    """The study's dry run through profiles/slurm, in an empty folder (every job planned)."""
    with tempfile.TemporaryDirectory() as workdir:
        done = subprocess.run(
            [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", workdir,
             "--profile", str(REPO / "profiles" / "slurm"), "--configfile", str(REPO / "config.yaml"), *configfiles,
             "--dry-run"],
            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        )
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return done.stdout


def planned_forwards(plan: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(model, rule) -> (jobs, forward passes) of the model jobs a dry run plans."""
    totals: dict[tuple[str, str], tuple[int, int]] = {}
    for rule, wildcards, res in JOB.findall(plan):
        resources = dict(kv.split("=", 1) for kv in res.split(", "))
        if "forward_passes" not in resources:
            continue
        model = dict(kv.split("=", 1) for kv in wildcards.split(", "))["model"]
        jobs, forwards = totals.get((model, rule), (0, 0))
        totals[(model, rule)] = (jobs + 1, forwards + int(resources["forward_passes"]))
    return totals


def measured_cpu_rate(n_prompts: int, threads: int) -> tuple[float, float, float]:
    """(seconds per prompt, tokens per prompt, achieved FLOP/s) of the default study's first prompt
    set through the engine on this CPU, float32."""
    import torch
    import yaml

    from workflow_scripts.core import paths, resources, table_io, tables
    from workflow_scripts.core.config import validate_config
    from workflow_scripts.model import engine, extract, loading
    from workflow_scripts.sources import manifests

    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    model_name, task = config["study"]["models"][0], config["study"]["tasks"][0]
    prompts = table_io.read_table(REPO / paths.prompts(model_name, task, config["study"]["seeds"][0], "random"), tables.PROMPTS)
    rows = prompts.slice(0, n_prompts).select(["prompt_id", "input_ids", "label_token_ids", "x_start", "y_pos", "query_start"]).to_pylist()
    requests = extract.requests_for(rows, {**config["extraction"], "kv_layers": [], "hidden_layers": []}, "prompts", None)
    manifest_path = REPO / paths.model_manifest(model_name)
    torch.set_num_threads(threads)
    model = engine.prepare(loading.load_model(manifests.read_manifest(manifest_path), "cpu", "float32", attn_implementation="sdpa"))
    engine.run(model, requests[:1], 1)  # warm-up
    began = time.perf_counter()
    engine.run(model, requests, 1)
    seconds = (time.perf_counter() - began) / len(requests)
    tokens = sum(len(r.input_ids) for r in requests) / len(requests)
    billions = resources.model_billions(manifest_path, None)
    return seconds, tokens, 2 * billions * 1e9 * tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", nargs="+", default=["config/paper_gptj.yaml"], help="the study's overlays of config.yaml")
    parser.add_argument("--tokens", type=float, default=None, help="tokens per prompt of the study (default: as measured)")
    parser.add_argument("--prompts", type=int, default=20, help="prompts timed on the CPU")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpu-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--utilization", type=float, default=0.3, help="assumed share of that peak a forward reaches")
    parser.add_argument("--load-minutes", type=float, default=1.0, help="model loading per GPU job")
    args = parser.parse_args()

    import yaml

    totals = planned_forwards(dry_run([str(REPO / f) for f in args.configfile]))
    seconds, tokens, cpu_flops = measured_cpu_rate(args.prompts, args.threads)
    tokens_per_prompt = args.tokens or tokens
    config = {}
    for file in ["config.yaml", *args.configfile]:
        overlay = yaml.safe_load((REPO / file).read_text())
        config.setdefault("models", {}).update(overlay.get("models", {}))
    print(f"measured on this CPU ({args.threads} thread, float32): {seconds:.3f} s per prompt of {tokens:.0f} tokens, "
          f"{cpu_flops / 1e9:.1f} GFLOP/s achieved")
    print(f"assumed on a GPU: {args.utilization:.0%} of {args.gpu_tflops:.0f} TFLOP/s; {tokens_per_prompt:.0f} tokens per prompt; "
          f"{args.load_minutes:g} min of loading per job\n")
    print(f"{'model':<14} {'rule':<14} {'jobs':>5} {'forwards':>9} {'CPU-hours (measured rate)':>26} {'GPU-hours (assumed rate)':>25}")
    grand = [0.0, 0.0]
    for (model, rule), (jobs, forwards) in sorted(totals.items()):
        billions = config["models"][model].get("parameters", 1.0)
        flops = forwards * 2 * billions * 1e9 * tokens_per_prompt
        cpu_hours = flops / cpu_flops / 3600
        gpu_hours = flops / (args.utilization * args.gpu_tflops * 1e12) / 3600 + jobs * args.load_minutes / 60
        grand[0] += cpu_hours
        grand[1] += gpu_hours
        print(f"{model:<14} {rule:<14} {jobs:>5} {forwards:>9} {cpu_hours:>26.0f} {gpu_hours:>25.1f}")
    print(f"{'total':<14} {'':<14} {'':>5} {'':>9} {grand[0]:>26.0f} {grand[1]:>25.1f}")


if __name__ == "__main__":
    main()
