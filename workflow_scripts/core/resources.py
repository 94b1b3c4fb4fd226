"""Memory and run time of the jobs that load the studied model, sized from its parameter count.

A cluster kills a job that outgrows its request and starts late one that asks too much, so one
constant cannot serve SmolLM2-135M and GPT-J-6B. Snakemake evaluates resources again when a job is
about to run (its inputs exist), so the model's weights can be measured then; a dry run before the
model is prepared falls back to the `models.<name>.parameters` config key, then to a default.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from workflow_scripts.core import paths

# A model whose size is neither measured nor configured is sized as a 1B model.
DEFAULT_BILLIONS = 1.0
# torch, transformers and the Python process before any weights are loaded.
BASE_MB = 2000
# Weights plus what loading and the forward pass hold beside them (activations, temporary copies).
WEIGHT_OVERHEAD = 1.3
# Seconds per prompt per billion parameters: one CPU thread, ~300-token prompts (SmolLM2-135M
# measured 1.85 s per prompt, i.e. ~14 s per billion), doubled for longer prompts; a GPU in bf16
# is some hundred times faster.
CPU_SECONDS = 28.0
GPU_SECONDS = 0.3
# Model loading and interpreter start-up, in minutes.
BASE_MINUTES = 10


def safetensors_billions(model_dir: str | Path) -> float | None:
    """Parameters (in billions) in a directory's *.safetensors files, read from their headers only."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with open(file, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return total / 1e9


def model_billions(manifest: str | Path | None, configured: float | None) -> float:
    """The model's size in billions of parameters: measured from its prepared weights when the
    manifest exists, else the configured value, else DEFAULT_BILLIONS."""
    if manifest is not None and Path(manifest).is_file():
        measured = safetensors_billions(paths.resolve_stored(json.loads(Path(manifest).read_text())["path"], manifest))
        if measured is not None:
            return measured
    return configured if configured is not None else DEFAULT_BILLIONS


def on_gpu(device: str) -> bool:
    """Whether jobs are sized for a GPU. `auto` is sized for the CPU: over-asking a GPU job's time
    is cheaper than a CPU job killed at its limit."""
    return device == "cuda"


def bytes_per_parameter(device: str, dtype: str) -> int:
    if dtype == "auto":
        return 2 if on_gpu(device) else 4
    return 4 if dtype == "float32" else 2


def model_mem_mb(billions: float, bytes_per_param: int, attempt: int = 1) -> int:
    """Host memory of a job that loads the model (weights pass through host memory on their way
    to a GPU too); doubled on each retry after an out-of-memory kill; rounded up to 500 MB."""
    weights_mb = billions * 1e9 * bytes_per_param / 2**20
    return 500 * math.ceil((BASE_MB + WEIGHT_OVERHEAD * weights_mb) * 2 ** (attempt - 1) / 500)


def model_runtime_min(billions: float, n_prompts: float, threads: int, device: str, attempt: int = 1) -> int:
    """Wall-clock minutes for `n_prompts` prompt-sized forward passes, doubled on each retry."""
    seconds = GPU_SECONDS if on_gpu(device) else CPU_SECONDS / max(threads, 1)
    return math.ceil((BASE_MINUTES + n_prompts * billions * seconds / 60) * 2 ** (attempt - 1))


def slurm_job_gpus(env: dict[str, str]) -> int | None:
    """GPUs of the Slurm job this process runs in (None outside one), from the variables Slurm sets
    for an allocation with GPUs (none set: it has none)."""
    if "SLURM_JOB_ID" not in env:
        return None
    if env.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return int(env["SLURM_GPUS_ON_NODE"])
    return len([g for g in env.get("SLURM_JOB_GPUS", "").split(",") if g])


def table_rows(path: str | Path, fallback: int) -> int:
    """Rows of a Parquet file from its footer, or `fallback` while it does not exist yet (or cannot be
    read: the job that reads it will say so)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except (pa.ArrowException, OSError):
        return fallback
