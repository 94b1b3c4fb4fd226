"""Choose a task's prompt template and label words by ICL accuracy on the dev split.

The dev split comes from prompts.split_examples with the study's n_eval, n_dev and split_seed, so
it is disjoint from the test examples and from the demonstration pool. Each dev example gets k
class-balanced demonstrations from the pool; the prediction is the argmax of the last position's
logits over the label-word token ids.

    python -m workflow_scripts.template_search candidates.yaml [--seeds 0 1] [--threads 1]

The candidates file: model_manifest, n_eval, split_seed, max_chars (optional) and `tasks`, each
task with source_file, column_names (or null), task (the columns/classes/label_map/query keys of
data.normalize), k, n_dev and `candidates`: a list of {name, template, label_words (class order),
query (optional, overrides the task's)}.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import yaml

from . import data as data_mod
from . import models, prompts

TEMPLATE_DEFAULTS = {"prefix": "", "output": " {label}", "separator": "\n\n"}


@dataclass(frozen=True)
class TemplateScore:
    accuracy: float
    mean_tokens: float
    seconds_per_prompt: float
    n: int
    predicted_counts: list[int]


def evaluate_template(
    model, tokenizer, data: pd.DataFrame, task_cfg: dict, template: dict, label_words: list[str],
    k: int, n_dev: int, split_seed: int, seed: int, *, n_eval: int = 120, max_chars: int = 0,
    task: str = "task",
) -> TemplateScore:
    """ICL accuracy (and prompt length, speed) of one template on the dev split."""
    import torch

    template = TEMPLATE_DEFAULTS | template
    if max_chars:  # the same filter as prompts.build_prompts, so the split matches the study's
        data = data[data.text.str.len() + data.text_b.fillna("").str.len() <= max_chars]
    data = data.reset_index(drop=True)
    n_classes = len(task_cfg["classes"])
    if len(label_words) != n_classes:
        raise prompts.PromptError(f"{len(label_words)} label words for {n_classes} classes")
    labels = data.label.to_numpy()
    split = prompts.split_examples(labels, n_classes, n_eval, n_dev, split_seed, task)
    rows = list(data.itertuples())
    token_ids = prompts.label_token_ids(tokenizer, template, label_words, prompts._fields(rows[split.dev[0]]))
    rng = np.random.default_rng(seed)
    correct, lengths, predicted = 0, [], np.zeros(n_classes, dtype=int)
    elapsed = 0.0
    for i in split.dev:
        demos = split.pool[prompts.sample_balanced(labels[split.pool], k, n_classes, rng)]
        words = [label_words[labels[j]] for j in demos]
        rendered = prompts.render(template, [(prompts._fields(rows[j]), w) for j, w in zip(demos, words)], prompts._fields(rows[i]))
        ids = prompts.tokenize(tokenizer, rendered, words)["input_ids"]
        lengths.append(len(ids))
        start = time.perf_counter()
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids]), logits_to_keep=1, use_cache=False).logits[0, -1]
        elapsed += time.perf_counter() - start
        pred = int(torch.argmax(logits[token_ids]))
        predicted[pred] += 1
        correct += pred == labels[i]
    n = len(split.dev)
    return TemplateScore(correct / n, float(np.mean(lengths)), elapsed / n, n, predicted.tolist())


def score_template(
    model, tokenizer, data: pd.DataFrame, task_cfg: dict, template: dict, label_words: list[str],
    k: int, n_dev: int, split_seed: int, seed: int, *, n_eval: int = 120, max_chars: int = 0,
) -> float:
    """ICL accuracy of one template and its label words on the dev split."""
    return evaluate_template(
        model, tokenizer, data, task_cfg, template, label_words, k, n_dev, split_seed, seed,
        n_eval=n_eval, max_chars=max_chars,
    ).accuracy


def load_task(task: str, spec: dict, query: str | None) -> pd.DataFrame:
    frame = data_mod.read_source_file(spec["source_file"], "csv", "utf-8-sig", spec.get("column_names"))
    return data_mod.normalize(frame, task, spec["task"] | {"query": query})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidates", help="YAML file of tasks and candidate templates")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--tasks", nargs="*", help="only these tasks")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    spec = yaml.safe_load(open(args.candidates))
    manifest = models.read_manifest(spec["model_manifest"])
    tokenizer = models.load_tokenizer(manifest)
    model = models.load_model(manifest, "cpu", "float32", attn_implementation="sdpa")
    for task, tspec in spec["tasks"].items():
        if args.tasks and task not in args.tasks:
            continue
        print(f"\n## {task}  k={tspec['k']} n_dev={tspec['n_dev']} n_eval={spec['n_eval']} split_seed={spec['split_seed']}")
        print(f"{'candidate':34} {'seed':>4} {'acc':>6} {'tokens':>7} {'s/prompt':>8}  predicted")
        cache: dict[str | None, pd.DataFrame] = {}
        for cand in tspec["candidates"]:
            query = cand.get("query", tspec["task"].get("query"))
            if query not in cache:
                cache[query] = load_task(task, tspec, query)
            for seed in args.seeds:
                try:
                    s = evaluate_template(
                        model, tokenizer, cache[query], tspec["task"], cand["template"], cand["label_words"],
                        tspec["k"], tspec["n_dev"], spec["split_seed"], seed,
                        n_eval=spec["n_eval"], max_chars=spec.get("max_chars", 0), task=task,
                    )
                except prompts.PromptError as exc:
                    print(f"{cand['name']:34} {seed:>4} SKIPPED: {exc}")
                    break
                print(f"{cand['name']:34} {seed:>4} {s.accuracy:6.3f} {s.mean_tokens:7.1f} {s.seconds_per_prompt:8.3f}  {s.predicted_counts}", flush=True)


if __name__ == "__main__":
    main()
