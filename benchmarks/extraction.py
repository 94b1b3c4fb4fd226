"""Extraction cost, side by side in one run: (a) a plain SDPA forward with last-position logits,
(b) the naive eager output_attentions + output_hidden_states forward, (c) the capture engine as the
default extraction runs it, (d) the engine also keeping keys, values and hidden states in every layer.

    python benchmarks/extraction.py --model resources/models/smollm2-135m/manifest.json
    python benchmarks/extraction.py --model random:smollm2-135m --device cuda --dtype bfloat16
    python benchmarks/extraction.py --model random:llama-1b --device cuda --dtype bfloat16

Prints, for each prompt length T and batch size, the median seconds per prompt and the peak memory
of each method, with the ratios c/a (engine overhead over a plain forward), b/c (speed-up over the
naive approach) and c/b (memory). Timing interleaves the methods repeat by repeat in one process,
so drift in the machine's speed falls on all alike. CPU peak memory is the growth of the resident-set
high-water mark during one forward of that method alone, in a fresh subprocess that no earlier
allocation has warmed; on CUDA it is torch's peak allocation.
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
    # GPT-J-6B's architecture (28 layers x 16 heads; 12 GB in bf16): the paper's model.
    "gptj-6b": dict(model_type="gptj", vocab_size=50400, n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, n_positions=2048),
}
METHODS = ("plain", "eager", "engine", "engine_kv")


def load(model_arg: str, device: str, dtype: str, attn: str):
    import torch
    import transformers

    from workflow_scripts.model import loading
    from workflow_scripts.sources import manifests

    if model_arg.startswith("random:"):
        torch.manual_seed(0)
        shape = dict(RANDOM_CONFIGS[model_arg.split(":", 1)[1]])
        config = transformers.AutoConfig.for_model(shape.pop("model_type", "llama"), **shape)
        # Initialized where it runs: a 6B model's random init on the host takes minutes.
        with torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=getattr(torch, dtype))
        return model.eval()
    return loading.load_model(manifests.read_manifest(model_arg), device, dtype, attn_implementation=attn)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> int:
    """Reset the resident-set high-water mark (Linux clear_refs 5) so it measures what follows."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def method_call(model, method: str, T: int, batch: int, device: str):
    """Switch `model` to `method` and return a function that runs one forward of it."""
    import torch

    from workflow_scripts.model import engine

    model.set_attn_implementation("eager" if method == "eager" else "sdpa")
    if method.startswith("engine"):
        engine.prepare(model)
    ids = torch.randint(100, model.config.vocab_size - 1, (batch, T), generator=torch.Generator().manual_seed(T))
    k = 8
    spans = [(1 + i * (T // k), (i + 1) * (T // k) - 2) for i in range(k)]
    every = list(range(model.config.num_hidden_layers))
    full = [engine.Request(row.tolist(), [5, 6], spans=spans, kv_positions=[min(y + d, T - 1) for _, y in spans for d in (-1, 0, 1, 2, 3)],
                           hidden_positions=[T - 1]) for row in ids]
    rows_only = [engine.Request(r.input_ids, r.label_token_ids) for r in full]

    def once():
        with torch.inference_mode():
            if method == "plain":
                model(input_ids=ids.to(device), use_cache=False, logits_to_keep=1)
            elif method == "eager":
                out = model(input_ids=ids.to(device), use_cache=False, logits_to_keep=1,
                            output_attentions=True, output_hidden_states=True)
                torch.stack([a[:, :, -1, :] for a in out.attentions]).cpu()
            elif method == "engine":
                engine.run_batch(model, rows_only)
            else:
                engine.run_batch(model, full, kv_layers=every, hidden_layers=every)
        if device == "cuda":
            torch.cuda.synchronize()

    return once


def seconds_per_prompt(model, T: int, batch: int, args) -> dict[str, float]:
    """Median seconds per prompt of every method, the methods interleaved repeat by repeat so that
    drift in the machine's speed falls on all of them alike."""
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for method in METHODS:
        method_call(model, method, T, batch, args.device)()  # warm-up
    for _ in range(args.repeats):
        for method in METHODS:
            once = method_call(model, method, T, batch, args.device)
            start = time.perf_counter()
            once()
            times[method].append(time.perf_counter() - start)
    return {m: statistics.median(t) / batch for m, t in times.items()}


def peak_mib(model, method: str, T: int, batch: int, device: str) -> float:
    """Peak memory of one forward of `method` above what the loaded model already holds."""
    import torch

    once = method_call(model, method, T, batch, device)
    # Touch every weight first (safetensors are memory-mapped and page in on first use), so the
    # peak is the method's activations, not the weights arriving.
    method_call(model, "plain", 8, 1, device)()
    once = method_call(model, method, T, batch, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        once()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = _reset_peak_rss()
    once()
    return (_status_kib("VmHWM") - base) / 1024


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
    import torch

    torch.set_num_threads(args.threads)
    if args.method:  # child process: the memory peak of one method, in a process no other method warmed
        print(json.dumps(peak_mib(load(args.model, args.device, args.dtype, "sdpa"), args.method, args.T, args.batch, args.device)))
        return
    print(f"model {args.model}, device {args.device}, dtype {args.dtype}, threads {args.threads}, repeats {args.repeats}")
    print("a: plain SDPA forward, last-position logits; b: eager output_attentions + output_hidden_states;")
    print("c: engine (attention rows + label logits, the default extraction); d: engine also keeping keys/values")
    print("   at 40 positions, highest-attention keys/values and the last hidden state in EVERY layer")
    header = (f"{'T':>5} {'batch':>5} | {'a plain s':>9} {'b eager s':>9} {'c engine s':>10} {'d +kv s':>8} | {'c/a':>5} {'d/a':>5} {'b/c':>5} "
              f"| {'a MiB':>6} {'b MiB':>6} {'c MiB':>6} {'d MiB':>6} {'c/b mem':>7}")
    print(header)
    print("-" * len(header))
    model = load(args.model, args.device, args.dtype, "sdpa")
    for T in args.lengths:
        for batch in args.batches:
            secs = seconds_per_prompt(model, T, batch, args)
            mem = {}
            for method in METHODS:
                if args.device == "cuda":
                    mem[method] = peak_mib(model, method, T, batch, args.device)
                    continue
                cmd = [sys.executable, __file__, "--model", args.model, "--device", args.device, "--dtype", args.dtype,
                       "--threads", str(args.threads), "--method", method, "--T", str(T), "--batch", str(batch)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{method} T={T} batch={batch} failed:\n{done.stderr[-3000:]}")
                mem[method] = json.loads(done.stdout.strip().splitlines()[-1])
            a, b, c, d = (secs[m] for m in METHODS)
            ma, mb, mc, md = (mem[m] for m in METHODS)
            print(f"{T:>5} {batch:>5} | {a:9.4f} {b:9.4f} {c:10.4f} {d:8.4f} | {c / a:5.2f} {d / a:5.2f} {b / c:5.2f} "
                  f"| {ma:6.0f} {mb:6.0f} {mc:6.0f} {md:6.0f} {mc / max(mb, 1e-9):7.2f}", flush=True)


if __name__ == "__main__":
    main()
