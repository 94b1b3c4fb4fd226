"""Extraction cost, side by side in one run: (a) a plain SDPA forward with last-position logits,
(b) the naive eager output_attentions + output_hidden_states forward, (c) the capture engine.

    python benchmarks/extraction.py --model resources/models/smollm2-135m/manifest.json
    python benchmarks/extraction.py --model random:smollm2-135m --device cuda --dtype bfloat16
    python benchmarks/extraction.py --model random:llama-1b --device cuda --dtype bfloat16

Prints, for each prompt length T and batch size, the median seconds per prompt and the peak memory
of each method, with the ratios c/a (engine overhead over a plain forward), b/c (speed-up over the
naive approach) and c/b (memory). CPU peak memory is the growth of the process's resident-set
high-water mark (reset after loading) during that method alone, so each (method, T, batch) runs in a
fresh subprocess that no earlier allocation has warmed; on CUDA it is torch's peak allocation.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RANDOM_CONFIGS = {
    # SmolLM2-135M's architecture (timing does not depend on the weights' values).
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True),
    # A ~1.1B-parameter llama (TinyLlama-1.1B's shape).
    "llama-1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                     num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096),
}
METHODS = ("plain", "eager", "engine")


def load(model_arg: str, device: str, dtype: str, attn: str):
    import torch
    import transformers

    from workflow_scripts import models

    if model_arg.startswith("random:"):
        torch.manual_seed(0)
        config = transformers.LlamaConfig(**RANDOM_CONFIGS[model_arg.split(":", 1)[1]])
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=getattr(torch, dtype))
        return model.to(device).eval()
    return models.load_model(models.read_manifest(model_arg), device, dtype, attn_implementation=attn)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> int:
    """Reset the resident-set high-water mark (Linux clear_refs 5) so it measures what follows."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def measure(args, model=None) -> dict:
    """One method at one (T, batch): median seconds per prompt and peak memory in MiB.

    Without `model` (CPU) the model is loaded here, in a fresh process; with one (CUDA, where peak
    memory can be reset in-process) it is switched to the method's attention implementation.
    """
    import torch

    from workflow_scripts import engine

    torch.set_num_threads(args.threads)
    if model is None:
        model = load(args.model, args.device, args.dtype, "eager" if args.method == "eager" else "sdpa")
    else:
        model.set_attn_implementation({"plain": "sdpa", "eager": "eager"}.get(args.method, "sdpa"))
    if args.method == "engine":
        engine.prepare(model)
    vocab = model.config.vocab_size
    batch = torch.randint(100, vocab - 1, (args.batch, args.T))
    k = 8
    spans = [(1 + i * (args.T // k), (i + 1) * (args.T // k) - 2) for i in range(k)]
    requests = [engine.Request(row.tolist(), [5, 6], spans=spans, kv_positions=[min(y + d, args.T - 1) for _, y in spans for d in (-1, 0, 1, 2, 3)])
                for row in batch]

    def once():
        with torch.inference_mode():
            if args.method == "plain":
                model(input_ids=batch.to(args.device), use_cache=False, logits_to_keep=1)
            elif args.method == "eager":
                out = model(input_ids=batch.to(args.device), use_cache=False, logits_to_keep=1,
                            output_attentions=True, output_hidden_states=True)
                torch.stack([a[:, :, -1, :] for a in out.attentions]).cpu()
            else:
                engine.run_batch(model, requests, kv_layers=list(range(model.config.num_hidden_layers)))
        if args.device == "cuda":
            torch.cuda.synchronize()

    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _reset_peak_rss()
    once()  # warm-up (and the memory peak: every repeat allocates the same)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else (_status_kib("VmHWM") - base) / 1024
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return {"seconds_per_prompt": statistics.median(times) / args.batch, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resources/models/smollm2-135m/manifest.json",
                        help="a model manifest, or random:smollm2-135m / random:llama-1b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--T", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:  # child process: one measurement, as JSON
        print(json.dumps(measure(args)))
        return
    print(f"model {args.model}, device {args.device}, dtype {args.dtype}, threads {args.threads}, repeats {args.repeats}")
    header = f"{'T':>5} {'batch':>5} | {'a plain s':>9} {'b eager s':>9} {'c engine s':>10} | {'c/a':>5} {'b/c':>5} | {'a MiB':>7} {'b MiB':>7} {'c MiB':>7} {'c/b mem':>7}"
    print(header)
    print("-" * len(header))
    shared = load(args.model, args.device, args.dtype, "sdpa") if args.device == "cuda" else None
    for T in args.lengths:
        for batch in args.batches:
            r = {}
            for method in METHODS:
                if shared is not None:
                    r[method] = measure(argparse.Namespace(**{**vars(args), "method": method, "T": T, "batch": batch}), shared)
                    continue
                cmd = [sys.executable, __file__, "--model", args.model, "--device", args.device, "--dtype", args.dtype,
                       "--threads", str(args.threads), "--repeats", str(args.repeats), "--method", method, "--T", str(T), "--batch", str(batch)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{method} T={T} batch={batch} failed:\n{done.stderr[-3000:]}")
                r[method] = json.loads(done.stdout.strip().splitlines()[-1])
            a, b, c = (r[m]["seconds_per_prompt"] for m in METHODS)
            ma, mb, mc = (r[m]["peak_mib"] for m in METHODS)
            print(f"{T:>5} {batch:>5} | {a:9.4f} {b:9.4f} {c:10.4f} | {c / a:5.2f} {b / c:5.2f} | {ma:7.0f} {mb:7.0f} {mc:7.0f} {mc / max(mb, 1e-9):7.2f}", flush=True)


if __name__ == "__main__":
    main()
