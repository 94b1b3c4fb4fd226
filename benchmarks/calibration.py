"""Contextual calibration's cost before and after it reused the prompt's own prefix, side by side in
one run on a real prompt set.

    python benchmarks/calibration.py --study results                 # the default study's first set
    python benchmarks/calibration.py --study results --prompts 40 --task tweet_sentiment

Before, the calibrate job ran every content-free prompt (the prompt's demonstrations, the query
replaced by "N/A") as a whole forward pass. Now the extraction job, which has just run the prompt,
runs only the content-free prompt's tokens after the prefix the two share, over the prompt's keys
and values (model/engine.py, continuation_logits). For each of the first `--prompts` prompts of the
set this times, alternating: the prompt's forward (what extraction pays anyway; it keeps the keys
and values), the content-free prompt's whole forward (before) and the continuation (after: the
twins of engine.CONTINUATION_BATCH prompts in one batch, as engine.run batches them, per prompt). It prints the medians and the ratio after / before: the cost of
calibrating a prompt with one content-free query, in forwards (every prompt of a set is calibrated,
Table 2 reads its held-out ones). It also prints the largest difference of the two logits and
whether the calibrated predictions agree.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow_scripts.core import paths, stats, table_io, tables  # noqa: E402

def timed(call):
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=Path("."), help="a study folder (holding resources/ and results/)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setting", default="random")
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the study's extraction.threads)")
    args = parser.parse_args()
    prompts_path = args.study / paths.prompts(args.model, args.task, args.seed, args.setting)
    manifest_path = args.study / paths.model_manifest(args.model)
    for path in (prompts_path, manifest_path):
        if not path.is_file():
            sys.exit(f"{path} is missing: run the study in {args.study} first (snakemake --cores 2)")
    prompts = table_io.read_table(prompts_path, tables.PROMPTS).slice(0, args.prompts).to_pylist()
    if prompts[0]["content_free_ids"] is None:
        sys.exit(f"{prompts_path} holds no content-free twins: a full set built with prompts.content_free by this checkout")

    import torch
    import transformers  # noqa: F401  (imported before timing)

    from workflow_scripts.model import engine, loading
    from workflow_scripts.sources import manifests

    cfg = {"threads": args.threads, "device": "cpu", "dtype": "float32"}
    model, _, _ = loading.prepared_model(manifests.read_manifest(manifest_path), cfg)
    times: dict[str, list[float]] = {"prompt forward": [], "content-free forward (before)": [], "continuation (after)": []}
    gaps, agree = [], 0
    for first in range(0, len(prompts), engine.CONTINUATION_BATCH):
        group = prompts[first : first + engine.CONTINUATION_BATCH]
        pending, fulls, icls = [], [], []
        for row in group:  # as the extraction job runs them: each prompt, its twin waiting for a batch
            ids, labels = row["input_ids"], row["label_token_ids"]
            start, tokens = row["content_free_start"][0], row["content_free_ids"][0]
            request = engine.Request(ids, labels, continuations=((start, tuple(tokens)),))
            t, result = timed(lambda: engine.run_batch(model, [request], defer_continuations=True)[0])
            times["prompt forward"].append(t)
            pending.append(result["_pending"])
            icls.append(result["label_logits"])
            t, full = timed(lambda: engine.run_batch(model, [engine.Request(ids[:start] + tokens, labels)])[0]["label_logits"])
            times["content-free forward (before)"].append(t)
            fulls.append(full)
        with torch.inference_mode():
            t, reused = timed(lambda: engine.continue_batch(model, pending))
        times["continuation (after)"] += [t / len(group)] * len(group)
        for icl, full, got in zip(icls, fulls, reused):
            gaps.append(float(np.max(np.abs(full - got[0]))))
            p_icl, p_full, p_reused = (stats.softmax(np.asarray(x, dtype=np.float64)) for x in (icl, full, got[0]))
            agree += int(np.argmax(p_icl / p_full) == np.argmax(p_icl / p_reused))
    medians = {name: statistics.median(values) for name, values in times.items()}
    n_tokens = statistics.median(len(r["input_ids"]) for r in prompts)
    print(f"{len(prompts)} prompts of {prompts_path} (median {n_tokens:.0f} tokens), {args.threads} thread(s)")
    for name, value in medians.items():
        print(f"  {name:34s} {value:7.3f} s")
    ratio = medians["continuation (after)"] / medians["content-free forward (before)"]
    print(f"  after / before: {ratio:.3f}x a forward per calibrated prompt (one content-free query)")
    print(f"  largest logit difference {max(gaps):.2e}; calibrated predictions agree on {agree} of {len(prompts)}")


if __name__ == "__main__":
    main()
