"""Opening the studied model: device, precision and placement from the config, for every stage
that runs it (extraction, zero-shot, calibration, interventions)."""
from __future__ import annotations

import logging

from workflow_scripts.model import engine

log = logging.getLogger(__name__)


class ExtractionError(RuntimeError):
    """A forward pass whose numbers cannot be trusted; the shard is not written."""



# Every job that loads the studied model logs this first (the tests find the model rules by it).
LOADING = "loading the studied model"


def load_model(manifest: dict, device: str, dtype: str, attn_implementation: str | None = None,
               device_map: str | dict | None = None, max_memory: dict | None = None):
    """The model in eval mode on `device`, or, with `device_map` (extraction.device_map), split by
    accelerate over the GPUs it sees (capped per device by `max_memory`) and run layer after layer."""
    import torch
    from transformers import AutoModelForCausalLM

    log.info("%s %s on %s (%s)%s", LOADING, manifest.get("name", manifest["path"]), device, dtype,
             f", split by device_map {device_map!r}" if device_map else "")
    placement = {"device_map": device_map, "max_memory": max_memory} if device_map else {}
    model = AutoModelForCausalLM.from_pretrained(
        manifest["path"],
        revision=manifest["revision"],
        trust_remote_code=manifest["trust_remote_code"],
        dtype=getattr(torch, dtype),
        attn_implementation=attn_implementation,
        **placement,
    )
    if device_map:
        # accelerate records no map when everything fits the first device.
        log.info("placement: %s", placement_summary(getattr(model, "hf_device_map", None) or {"model": device}))
        return model.eval()
    return model.to(device).eval()


def placement_summary(device_map: dict) -> str:
    """'cuda:0: 41 modules, cuda:1: 40 modules' from accelerate's module -> device map."""
    counts: dict[str, int] = {}
    for where in device_map.values():
        key = f"cuda:{where}" if isinstance(where, int) else str(where)
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{where}: {n} modules" for where, n in counts.items())


def resolve_device(device: str, dtype: str) -> tuple[str, str]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ExtractionError("config key 'extraction.device' is 'cuda' but no CUDA device is visible")
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    return device, dtype


def max_memory(caps: dict | None) -> dict | None:
    """extraction.max_memory as accelerate takes it: GPU indices as ints ("0" in YAML, to be a string key)."""
    return {int(k) if str(k).isdigit() else str(k): v for k, v in caps.items()} if caps else None


def prepared_model(manifest: dict, cfg: dict):
    """The studied model as the model stages run it: cfg's threads, device and dtype, SDPA through the
    capture engine. Returns (model, device, dtype)."""
    import torch

    torch.set_num_threads(cfg["threads"])
    device, dtype = resolve_device(cfg["device"], cfg["dtype"])
    model = load_model(manifest, device, dtype, attn_implementation="sdpa",
                       device_map=cfg.get("device_map"), max_memory=max_memory(cfg.get("max_memory")))
    return engine.prepare(model), device, dtype


# Where the model runs and how fast, not what it computes: never params (a split model gives the
# numbers of one device; tests/test_engine_split.py).
SPEED_KEYS = ("batch_size", "zero_shot_batch_size", "device_map", "max_memory")


def run_settings(smk) -> dict:
    """The job's extraction settings: the params (what changes the numbers, so Snakemake re-runs on
    a change) plus the speed settings, read from the config and the job's threads so that changing
    them re-runs nothing (docs/reruns.md)."""
    speed = {key: smk.config["extraction"][key] for key in SPEED_KEYS}
    return {**smk.params.extraction, **speed, "threads": smk.threads}
