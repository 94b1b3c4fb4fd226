"""Cost of the causal check's edits, side by side in one run: (a) one plain forward of a prompt on the
engine-prepared model with no capture active (so SDPA; no cache, last-position logits: what extraction
costs without its captures) against (b) 20 edits of that prompt by engine_edits.intervene (its prefix
once, then one batched pass of the last token), on the same model.

    python benchmarks/interventions.py                                   # SmolLM2-135M's shape, random weights
    python benchmarks/interventions.py --model resources/models/smollm2-135m/manifest.json

Prints, per prompt length T, the median seconds of (a) and (b) over interleaved repeats and the
ratio b/a (target: at most 1.5 on CPU). The 20 edits mix what the pipeline runs: knockouts of 1, 4 and
16 heads, label-attention knockouts (8 positions) and steering moves between two sets of 40 positions.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extraction import load  # noqa: E402


def twenty_edits(config, n_tokens: int, seed: int) -> list:
    """Knockouts, label-attention knockouts and steering moves in 1, 4 and 16 heads."""
    import numpy as np

    from workflow_scripts.causal.edits import Edit, head_dim

    rng = np.random.default_rng(seed)
    every = [(layer, head) for layer in range(config.num_hidden_layers) for head in range(config.num_attention_heads)]
    labels = tuple(range(n_tokens // 9, n_tokens - 1, n_tokens // 9))[:8]
    edits = []
    for i in range(20):
        m = (1, 4, 16)[i % 3]
        heads = tuple(every[j] for j in rng.choice(len(every), m, replace=False))
        kind = i % 3 if i < 18 else i % 2
        if kind == 0:
            edits.append(Edit(heads, replace=rng.normal(size=(m, head_dim(config)))))
        elif kind == 1:
            edits.append(Edit(heads, drop=labels))
        else:
            edits.append(Edit(heads, move_from=tuple(range(1, 41)), move_to=tuple(range(60, 100))))
    return edits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:smollm2-135m", help="random:<shape> or a model manifest.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import torch

    from workflow_scripts.causal.edits import intervene
    from workflow_scripts.model import engine

    torch.set_num_threads(args.threads)
    model = engine.prepare(load(args.model, "cpu", "float32", "sdpa"))
    print(f"{args.model}, {args.threads} threads, median of {args.repeats} interleaved repeats")
    print(f"{'T':>6} {'plain forward s':>16} {'20 edits s':>11} {'ratio':>6}")
    for T in args.lengths:
        ids = torch.randint(100, model.config.vocab_size - 1, (1, T), generator=torch.Generator().manual_seed(T))
        edits = twenty_edits(model.config, T, seed=T)

        def plain() -> None:
            with torch.inference_mode():
                model(input_ids=ids, use_cache=False, logits_to_keep=1)

        def edited() -> None:
            intervene(model, ids[0].tolist(), [5, 6], edits)

        plain(), edited()  # warm-up
        times: dict[str, list[float]] = {"plain": [], "edits": []}
        for _ in range(args.repeats):
            for name, run in (("plain", plain), ("edits", edited)):
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
        a, b = statistics.median(times["plain"]), statistics.median(times["edits"])
        print(f"{T:>6} {a:>16.3f} {b:>11.3f} {b / a:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
