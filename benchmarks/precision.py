"""Reduced precision, measured: one prompt set of a finished study run in float32 and in a reduced
dtype, side by side in one process.

    python benchmarks/precision.py                                  # the default study's rotten_tomatoes, seed 0
    python benchmarks/precision.py --task tweet_sentiment --dtype float16 --device cuda

Both precisions run the same prompts through the capture engine as extraction does (batch by
batch, alternating which goes first, so drift in the machine's speed falls on both alike). Prints:
the share of prompts whose ICL prediction (argmax over the label words) is the same, the max and
mean absolute difference of the last-token attention rows (over every layer, head and token), the
label-logit difference, the head each attention kernel reading of Table 2 chooses on the select
split in each precision with its held-out agreement, and the seconds per prompt of each with the
ratio reduced / float32.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def study_config(study: Path) -> dict:
    import yaml

    from workflow_scripts.core.config import validate_config

    return validate_config(yaml.safe_load((study / "config.yaml").read_text()))


def chosen_heads(prompts, results: list[dict], rows: list[dict], cfg: dict, n_classes: int, analysis: dict, split_seed: int) -> dict:
    """Per attention kernel reading: the head Table 2 chooses on the select split, with its
    select and held-out agreement with the ICL prediction of the same precision."""
    import pyarrow as pa

    from workflow_scripts.analysis import head_choice, reconstruction
    from workflow_scripts.core import kernels, tables
    from workflow_scripts.model import extract

    requests = extract.requests_for(rows, {**cfg, "kv_layers": [], "hidden_layers": []}, "prompts", None)
    shards = pa.Table.from_pydict(extract.shard_columns(rows, results, requests, {**cfg, "kv_layers": [], "hidden_layers": []}),
                                  schema=tables.SHARD)
    recon, _, _ = reconstruction.score_set(prompts, shards, n_classes)
    chosen = {}
    for kernel in kernels.ATTENTION_KERNELS:
        split = head_choice.head_split(recon, kernel, analysis["n_select"], analysis["n_heldout"], split_seed)
        scores = split.select_agreement()
        layer, head = (int(i) for i in divmod(int(scores.argmax()), scores.shape[1]))
        held = head_choice.agreement(split.grid[split.heldout, layer, head], split.icl[split.heldout])
        chosen[kernel] = {"head": f"L{layer} H{head}", "select": float(scores[layer, head]), "heldout": float(held.mean())}
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=Path("."), help="a finished study folder (its config.yaml and results/)")
    parser.add_argument("--model", default=None, help="a model of the study (default: its first)")
    parser.add_argument("--task", default=None, help="a task of the study (default: its first)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--setting", default="random")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts (a smoke run: no head choice)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from workflow_scripts.core import paths, table_io, tables
    from workflow_scripts.model import engine, extract, loading
    from workflow_scripts.sources import manifests

    config = study_config(args.study)
    model_name = args.model or config["study"]["models"][0]
    task = args.task or config["study"]["tasks"][0]
    seed = config["study"]["seeds"][0] if args.seed is None else args.seed
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = table_io.read_table(args.study / paths.prompts(model_name, task, seed, args.setting), tables.PROMPTS)
    manifest = manifests.read_manifest(args.study / paths.model_manifest(model_name))
    cfg = {**config["extraction"], "batch_size": args.batch_size}
    if args.limit:
        prompts = prompts.slice(0, args.limit)
    rows = prompts.select(["prompt_id", "input_ids", "label_token_ids", "x_start", "y_pos", "query_start"]).to_pylist()
    requests = extract.requests_for(rows, {**cfg, "kv_layers": [], "hidden_layers": []}, "prompts", None)
    dtypes = ("float32", args.dtype)
    loaded = {d: engine.prepare(loading.load_model(manifest, args.device, d, attn_implementation="sdpa")) for d in dtypes}
    results: dict[str, list[dict]] = {d: [] for d in dtypes}
    seconds = {d: 0.0 for d in dtypes}
    for start in range(0, len(requests), args.batch_size):
        batch = requests[start : start + args.batch_size]
        order = dtypes if (start // args.batch_size) % 2 == 0 else dtypes[::-1]
        for d in order:
            began = time.perf_counter()
            results[d] += engine.run(loaded[d], batch, args.batch_size)
            if args.device == "cuda":
                torch.cuda.synchronize()
            seconds[d] += time.perf_counter() - began
    full, reduced = results["float32"], results[args.dtype]
    # The float32 run should reproduce the study's own shards (written in float32 on the CPU).
    shard_files = sorted((args.study / paths.prompt_set(model_name, task, seed, args.setting) / "shards").glob("*.parquet"))
    stored = dict(zip(*table_io.read_tables(shard_files, tables.SHARD, ["prompt_id", "prediction"]).to_pydict().values()))
    reproduced = np.mean([stored[r["prompt_id"]] == int(np.argmax(f["label_logits"])) for r, f in zip(rows, full)])
    same = np.mean([np.argmax(a["label_logits"]) == np.argmax(b["label_logits"]) for a, b in zip(full, reduced)])
    # The float32 margin between the two best label words: are the changed predictions near-ties?
    margins = np.array([np.diff(np.sort(a["label_logits"])[-2:])[0] for a in full])
    changed = np.array([np.argmax(a["label_logits"]) != np.argmax(b["label_logits"]) for a, b in zip(full, reduced)])
    diffs = [np.abs(a["attention"] - b["attention"]) for a, b in zip(full, reduced)]
    logit_diff = [np.abs(a["label_logits"] - b["label_logits"]).max() for a, b in zip(full, reduced)]
    n_classes = len(config["tasks"][task]["classes"])
    split_seed = config["prompts"]["split_seed"]
    heads = {d: {} if args.limit else chosen_heads(prompts, results[d], rows, cfg, n_classes, config["analysis"], split_seed)
             for d in dtypes}
    numbers = {
        "model": model_name, "task": task, "seed": seed, "setting": args.setting, "device": args.device,
        "threads": torch.get_num_threads(), "batch_size": args.batch_size, "prompts": len(requests),
        "dtype": args.dtype, "same_prediction": float(same), "float32_reproduces_study": float(reproduced),
        "attention_max_abs_diff": float(max(d.max() for d in diffs)),
        "attention_mean_abs_diff": float(np.concatenate([d.ravel() for d in diffs]).mean()),
        "label_logit_max_abs_diff": float(max(logit_diff)),
        "changed_float32_margin_max": float(margins[changed].max()) if changed.any() else None,
        "float32_margin_median": float(np.median(margins)),
        "seconds_per_prompt": {d: seconds[d] / len(requests) for d in dtypes},
        "speedup": seconds["float32"] / seconds[args.dtype],
        "chosen_heads": heads,
        "same_chosen_heads": all(heads["float32"][k]["head"] == heads[args.dtype][k]["head"] for k in heads["float32"]),
    }
    print(f"{model_name} / {task} / seed {seed} / {args.setting}: {len(requests)} prompts on {args.device}, "
          f"{numbers['threads']} threads, batch size {args.batch_size}")
    print(f"float32 gives the study's stored ICL prediction on {reproduced:.1%} of prompts")
    print(f"same ICL prediction in {args.dtype} as in float32: {same:.1%}")
    print(f"attention rows: max |diff| {numbers['attention_max_abs_diff']:.2e}, mean |diff| {numbers['attention_mean_abs_diff']:.2e}")
    print(f"label logits: max |diff| {numbers['label_logit_max_abs_diff']:.3f}; float32 margin of the two best label words: "
          f"median {numbers['float32_margin_median']:.3f} over all prompts, at most {numbers['changed_float32_margin_max'] or 0:.3f} "
          "on those whose prediction changed")
    for kernel in heads["float32"]:
        a, b = heads["float32"][kernel], heads[args.dtype][kernel]
        print(f"kernel {kernel:>10}: float32 {a['head']} (held-out {a['heldout']:.3f}), {args.dtype} {b['head']} (held-out {b['heldout']:.3f})")
    print(f"seconds per prompt: float32 {numbers['seconds_per_prompt']['float32']:.3f}, {args.dtype} "
          f"{numbers['seconds_per_prompt'][args.dtype]:.3f}; speed-up {numbers['speedup']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")


if __name__ == "__main__":
    main()
