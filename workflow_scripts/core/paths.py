"""Every file path of the pipeline, built in one place.

Called without arguments, a function returns the Snakemake pattern (with {wildcards}); called with
values, the concrete path. Rules and tests use the same functions, so the layout cannot drift.
"""
from __future__ import annotations

import math
from pathlib import Path

RESOURCES = "resources"
RESULTS = "results"
LOGS = "logs"

W = {"model": "{model}", "task": "{task}", "seed": "{seed}", "setting": "{setting}", "shard": "{shard}",
     "ablation": "{ablation}"}


def downloads(kind: str) -> str:
    return f"{RESOURCES}/downloads/{kind}"


def task_source(task: str = W["task"]) -> str:
    return f"{RESOURCES}/data/source/{task}"


def task_data(task: str = W["task"]) -> str:
    return f"{RESOURCES}/data/{task}.parquet"


def model_manifest(model: str = W["model"]) -> str:
    return f"{RESOURCES}/models/{model}/manifest.json"


def encoder_manifest() -> str:
    return f"{RESOURCES}/encoder/manifest.json"


def embeddings(task: str = W["task"]) -> str:
    """Sentence-encoder embeddings of a task's test queries and pool (the same for every model)."""
    return f"{RESULTS}/embeddings/{task}.parquet"


def zero_shot(model: str = W["model"], task: str = W["task"]) -> str:
    """Each test query and pool example run alone through the model (the same for every seed)."""
    return f"{RESULTS}/{model}/{task}/zero_shot.parquet"


def prompt_set(model=W["model"], task=W["task"], seed=W["seed"], setting=W["setting"]) -> str:
    """The folder of one prompt set: model x task x seed x setting."""
    return f"{RESULTS}/{model}/{task}/seed{seed}/{setting}"


def prompts(model=W["model"], task=W["task"], seed=W["seed"], setting=W["setting"]) -> str:
    return f"{prompt_set(model, task, seed, setting)}/prompts.parquet"


def shard(model=W["model"], task=W["task"], seed=W["seed"], setting=W["setting"], shard=W["shard"]) -> str:
    return f"{prompt_set(model, task, seed, setting)}/shards/{shard}.parquet"


def analysis(name: str, model=W["model"], task=W["task"], seed=W["seed"], setting=W["setting"]) -> str:
    return f"{prompt_set(model, task, seed, setting)}/{name}"


def over_seeds(name: str, model=W["model"], task=W["task"], setting=W["setting"]) -> str:
    """A table that pools all seeds of one model x task x setting."""
    return f"{RESULTS}/{model}/{task}/all_seeds/{setting}/{name}"


def ablation(name: str, model=W["model"], ablation=W["ablation"]) -> str:
    """Tables of one Section 4.2 ablation (all its tasks, seeds and settings)."""
    return f"{RESULTS}/{model}/ablations/{ablation}/{name}"


def theory(name: str) -> str:
    return f"{RESULTS}/theory/{name}"


def report() -> str:
    return f"{RESULTS}/report.md"


def report_figure(name: str) -> str:
    """A figure, table or piece of results/report.md (which links the figures here)."""
    return f"{RESULTS}/report/{name}"


def report_set(name: str, model=W["model"], task=W["task"], setting=W["setting"]) -> str:
    """A figure, table or report piece of one model x task x setting, over all its seeds."""
    return report_figure(f"{model}__{task}__{setting}__{name}")


def report_ablation(extension: str, model=W["model"], ablation=W["ablation"]) -> str:
    """The figure (png), table (csv, html) or report piece (md) of one ablation."""
    return report_figure(f"{model}__ablation__{ablation}.{extension}")


def shard_ids(n_prompts: int, shard_size: int) -> list[str]:
    """Names of the shards that hold n_prompts prompts, shard_size each (the last may be shorter)."""
    return [f"{i:03d}" for i in range(math.ceil(n_prompts / shard_size))]


def log(rule: str, *parts) -> str:
    """Log of one job: logs/{rule}/{part}/.../log (parts may be wildcard patterns)."""
    return "/".join([LOGS, rule, *map(str, parts)]) + ".log"


def benchmark(rule: str, *parts) -> str:
    """Snakemake's benchmark file of one job (wall seconds, peak memory): logs/benchmarks/{rule}/{part}/....tsv."""
    return "/".join([LOGS, "benchmarks", rule, *map(str, parts)]) + ".tsv"


# Manifests (resources/models/{model}/manifest.json, resources/encoder/manifest.json) store where
# their files are. Jobs run in the study folder, so a path inside it is stored relative to it: a
# moved or copied study still finds its own files.


def portable(path: str | Path) -> str:
    """`path` as a manifest stores it: relative to the working directory (the study folder) when it
    lies inside it, else absolute (a model folder the config names elsewhere, a hub cache snapshot)."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def study_root(manifest: str | Path) -> Path:
    """The study folder a manifest lies in: the folder holding its resources/ folder."""
    parts = Path(manifest).resolve().parts
    if RESOURCES not in parts:
        return Path(manifest).resolve().parent
    last = len(parts) - 1 - parts[::-1].index(RESOURCES)
    return Path(*parts[:last])


def resolve_stored(stored: str, manifest: str | Path) -> str:
    """A path a manifest stored, as an absolute path that exists where one can be found, else `stored`.

    A relative path is looked for in the study the manifest lies in (the working directory of a
    job; a benchmark run elsewhere may read another study's manifest), then in the working
    directory. An absolute path that no longer exists was written by an older version in a study
    since moved: its part from resources/ on is looked for in the same places."""
    path = Path(stored)
    if path.is_absolute():
        if path.exists():
            return stored
        starts = [i for i, part in enumerate(path.parts) if part == RESOURCES]
        relative = [Path(*path.parts[i:]) for i in starts[::-1]]
    else:
        relative = [path]
    for root in dict.fromkeys([study_root(manifest), Path.cwd().resolve()]):
        for candidate in relative:
            if (root / candidate).exists():
                return str((root / candidate).resolve())
    return stored
