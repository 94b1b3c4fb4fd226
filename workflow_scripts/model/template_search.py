"""Choose a task's template and label words by ICL accuracy on the dev split, never the test set.

    python -m workflow_scripts.model.template_search benchmarks/template_candidates.yaml --seeds 0 1

Run it after the data and model stages (`snakemake --until prepare_task prepare_model`): it reads
resources/data/{task}.parquet and the model manifest, builds dev prompts exactly as the pipeline
builds test prompts (sets.build_prompts with part="dev"; config `prompts.n_dev` > 0), and
scores the model's prediction at the last position.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import polars as pl
import yaml

from workflow_scripts.core import paths, readers
from workflow_scripts.core.config import setting_defaults, validate_config
from workflow_scripts.core.split import SplitError
from workflow_scripts.model import loading
from workflow_scripts.prompts import sets
from workflow_scripts.prompts.text import PromptError
from workflow_scripts.sources import manifests, tokenizers

RANDOM = setting_defaults({"selection": "random"})  # dev prompts use random demonstrations


@dataclass(frozen=True)
class TemplateScore:
    accuracy: float
    mean_tokens: float
    predicted_counts: list[int]


def dev_score(model, tokenizer, data: pl.DataFrame, task_cfg: dict, prompt_cfg: dict, seed: int, task: str) -> TemplateScore:
    """ICL accuracy of the task's template and label words on its dev examples."""
    import torch

    built = sets.build_prompts(data, task_cfg, prompt_cfg, RANDOM, seed, tokenizer, task, part="dev")
    predicted = []
    for ids, label_ids in zip(built["input_ids"], built["label_token_ids"]):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids]), logits_to_keep=1, use_cache=False).logits[0, -1]
        predicted.append(int(torch.argmax(logits[label_ids])))
    predicted_arr = np.asarray(predicted)
    return TemplateScore(
        float(np.mean(predicted_arr == np.asarray(built["label"]))),
        float(np.mean([len(ids) for ids in built["input_ids"]])),
        np.bincount(predicted_arr, minlength=len(task_cfg["classes"])).tolist(),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidates", help="YAML: model, n_dev, and per task a list of {name, template, label_words}")
    parser.add_argument("--config", nargs="+", default=["config.yaml"], help="the study's config files, merged in order")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from snakemake.utils import update_config

    config: dict = {}
    for path in args.config:  # merged like snakemake merges --configfile over config.yaml
        update_config(config, yaml.safe_load(open(path)))
    validate_config(config)
    spec = yaml.safe_load(open(args.candidates))
    manifest = manifests.read_manifest(paths.model_manifest(spec["model"]))
    tokenizer = tokenizers.load_tokenizer(manifest, config["prompts"]["prepend_bos"])
    model = loading.load_model(manifest, "cpu", "float32", attn_implementation="sdpa")
    prompt_cfg = {**config["prompts"], "n_dev": spec["n_dev"]}
    for task, candidates in spec["tasks"].items():
        data = readers.read_task_data(paths.task_data(task))
        print(f"\n## {task}: k={prompt_cfg['k']} n_dev={spec['n_dev']} split_seed={prompt_cfg['split_seed']}")
        for cand in candidates:
            task_cfg = {**config["tasks"][task], "template": {**config["tasks"][task]["template"], **cand["template"]},
                        "label_words": cand["label_words"]}
            for seed in args.seeds:
                try:
                    s = dev_score(model, tokenizer, data, task_cfg, prompt_cfg, seed, task)
                except (PromptError, SplitError) as exc:
                    print(f"{cand['name']:32} seed {seed}: skipped ({exc})")
                    break
                print(f"{cand['name']:32} seed {seed}: accuracy {s.accuracy:.3f}  tokens {s.mean_tokens:.0f}  predicted {s.predicted_counts}", flush=True)


if __name__ == "__main__":
    main()
