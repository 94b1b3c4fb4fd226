"""What a job of this pipeline pays before its first prompt, component by component, per rule, with
the code of `--before` and this checkout's side by side in one run.

    python benchmarks/startup.py                     # the finished study in /work/before, against HEAD
    python benchmarks/startup.py --study . --before 3e8c9c6 --repeats 5 --rules extract_shard reconstruct

A rule's job is a fresh interpreter that runs Snakemake's `script:` file: Snakemake's preamble
(unpickling the job's `snakemake` object, which imports snakemake itself), then the entry script
rules/common.smk's stage() writes (core/code.py: one import of core/job.py), which imports the
stage module and calls its function. Each measurement here is such a process, started afresh, with
the preamble built the way Snakemake builds it (snakemake/script/__init__.py) from this rule's
config, so what it imports is what a job imports. Its components:

- interpreter: `python -c pass`, start to exit (site, the .pth files of the environment);
- preamble: Snakemake's preamble; entry: `from workflow_scripts.core.job import run`;
- stage import: importing the stage module the rule names (rules/*.smk of each version);
- work imports, load, 1st / 2nd call: for the rules whose work opens a model, what it imports when
  it opens it (torch, transformers and the model's modeling module; tokenizers), the load itself
  (the studied model through model/loading.py's prepared_model with the config's device, dtype and
  threads from the study's converted model; the encoder as model/embedding.py opens it; the
  tokenizer through sources/tokenizers.py) and its first and second forward (the first prompt of
  the study's first prompt set; the first text of the task data): the first's excess over the
  second is one-time warm-up;
- exit: the process's wall time, spawn to exit, less all of the above: mostly Python's teardown of
  every module at exit (about 1 s once torch is loaded), which a job skips where its version's
  core/job.py has end_process (the child ends through it as a job does).

Every component is the median over `--repeats` fresh processes, the two versions alternating repeat
by repeat so that drift in the machine's speed falls on both alike; `total` is the median wall time.
Below the table: per rule which heavy packages the stage import loads, where its import time goes
(-X importtime self time summed per top-level package, one more process each), whether the stage's
code fingerprint moves (core/code.py: a moved fingerprint re-runs that rule's jobs in an existing
study), and what the converted model folder holds (safetensors dtype) against the dtype jobs run in.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from checkout import checkout  # benchmarks/checkout.py, beside this script

REPO = Path(__file__).resolve().parents[1]

# Packages worth naming when a stage import loads them.
HEAVY = ("torch", "transformers", "tokenizers", "safetensors", "accelerate", "huggingface_hub", "polars", "pyarrow",
         "numpy", "scipy", "matplotlib", "datasets", "pandas", "sklearn", "jsonschema", "yaml", "tqdm", "PIL", "gguf")
# What the rules' work opens (beyond importing their stage module).
MODEL_RULES = ("extract_shard", "zero_shot", "interventions")
WORK = {**{rule: "model" for rule in MODEL_RULES}, "embed_task": "encoder", "build_prompts": "tokenizer"}
COMPONENTS = ("preamble", "entry", "stage_import", "work_imports", "load", "first", "second")

# Appended to Snakemake's preamble: the entry script's work, timed, then the rule's work if any.
CHILD = r'''
_T1 = _time.perf_counter()
import json as _json
_spec = _json.loads(sys.argv[1])
sys.path.insert(0, _spec["code"])
from workflow_scripts.core.job import run as _run  # noqa: F401  (the entry script's one import)
_T2 = _time.perf_counter()
import importlib
sys.stderr.write("STARTUP-MARK stage\n")
_stage = importlib.import_module(_spec["module"])
getattr(_stage, _spec["function"])
sys.stderr.write("STARTUP-MARK work\n")
_T3 = _time.perf_counter()
_out = {"preamble": _T1 - _T0, "entry": _T2 - _T1, "stage_import": _T3 - _T2,
        "loaded": sorted(m for m in _spec["heavy"] if m in sys.modules)}

def _rss(field="VmRSS"):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

def _modeling(folder):
    kind = _json.loads(open(folder + "/config.json").read())["model_type"].replace("-", "_")
    importlib.import_module(f"transformers.models.{kind}.modeling_{kind}")

_work = _spec["work"]
if _work == "model":
    import torch
    from transformers import AutoModelForCausalLM  # noqa: F401
    from workflow_scripts.model import engine, loading
    from workflow_scripts.sources import manifests
    _manifest = manifests.read_manifest(_spec["manifest"])
    _modeling(_manifest["path"])
    _T4 = _time.perf_counter()
    _before = _rss()
    _model, _device, _dtype = loading.prepared_model(_manifest, _spec["cfg"])
    _T5 = _time.perf_counter()
    _out["load_rss_mib"] = _rss() - _before
    _out["param_dtypes"] = sorted({str(p.dtype) for p in _model.parameters()})
    _request = engine.Request(input_ids=_spec["prompt"]["input_ids"], label_token_ids=_spec["prompt"]["label_token_ids"])
    def _call():
        engine.run(_model, [_request], 1)
elif _work == "encoder":
    import torch
    from transformers import AutoModel, AutoTokenizer
    from workflow_scripts.sources.manifests import read_encoder_manifest
    _folder = read_encoder_manifest(_spec["encoder_manifest"])["path"]
    _modeling(_folder)
    _T4 = _time.perf_counter()
    torch.set_num_threads(1)  # as model/embedding.py's write_embeddings
    _tokenizer = AutoTokenizer.from_pretrained(_folder, local_files_only=True)
    _model = AutoModel.from_pretrained(_folder, local_files_only=True).to("cpu").eval()
    _T5 = _time.perf_counter()
    def _call():
        with torch.inference_mode():
            _model(**_tokenizer([_spec["text"]], padding=True, truncation=True, max_length=256, return_tensors="pt"))
elif _work == "tokenizer":
    import tokenizers  # noqa: F401
    from workflow_scripts.sources import manifests
    from workflow_scripts.sources import tokenizers as _tokenizers
    _manifest = manifests.read_manifest(_spec["manifest"])
    _T4 = _time.perf_counter()
    _tokenizer = _tokenizers.load_tokenizer(_manifest)
    _T5 = _time.perf_counter()
    def _call():
        _tokenizer(_spec["text"], return_offsets_mapping=True)
if _work:
    _call()
    _T6 = _time.perf_counter()
    _call()
    _T7 = _time.perf_counter()
    _out.update(work_imports=_T4 - _T3, load=_T5 - _T4, first=_T6 - _T5, second=_T7 - _T6,
                work_loaded=sorted(m for m in _spec["heavy"] if m in sys.modules and m not in _out["loaded"]))
print("STARTUP " + _json.dumps(_out), flush=True)
# The job ends as this version's core/job.py ends it.
_end = getattr(sys.modules["workflow_scripts.core.job"], "end_process", None)
if _end:
    _end()
'''


def rule_stages(rules: Path) -> dict[str, str]:
    """rule -> the "package.module:function" its `script: stage(...)` names (as tests/plans.py reads them)."""
    found = {}
    for path in sorted(rules.glob("*.smk")):
        for name, body in re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", path.read_text(), re.DOTALL | re.MULTILINE):
            match = re.search(r'script:\s*\n\s*stage\("([\w.]+:\w+)"\)', body)
            if match:
                found[name] = match.group(1)
    return found


def preamble(rule: str, config: dict, threads: int, log: Path) -> str:
    """Snakemake's preamble for a job of `rule`, as snakemake.script.PythonScript.generate_preamble
    writes it (the job's input and output are placeholders: their strings are all the pickle holds)."""
    from snakemake.common import get_snakemake_searchpaths
    from snakemake.iocontainers import (
        InputFiles,
        Log,
        OutputFiles,
        Params,
        ResourceList,
        Snakemake,
        Wildcards,
    )

    smk = Snakemake(
        InputFiles(fromdict={"prompts": "results/prompts.parquet", "manifest": "resources/models/manifest.json"}),
        OutputFiles(toclone=["results/out.parquet"]), Params(fromdict={"extraction": dict(config["extraction"])}),
        Wildcards(fromdict={"model": "m", "task": "t", "seed": "0", "setting": "random"}), threads,
        ResourceList(fromdict={"_cores": threads, "_nodes": 1, "mem_mb": 1000, "tmpdir": tempfile.gettempdir()}),
        Log(toclone=[str(log)]), config, rule, None, str(REPO / "rules"),
    )
    body = (f"import sys;sys.path.extend({get_snakemake_searchpaths()!r});import pickle;"
            f"snakemake = pickle.loads({pickle.dumps(smk, protocol=4)!r});"
            "from snakemake.logging import logger;from snakemake.iocontainers import Snakemake;"
            f"__real_file__ = __file__; __file__ = {str(REPO / 'rules' / 'stage.py')!r};")
    return ("import time as _time\n_T0 = _time.perf_counter()\n"
            "######## snakemake preamble start (automatically inserted, do not edit) ########\n"
            f"{body}\n######## snakemake preamble end #########\n")


def wall(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(args, check=False, capture_output=True, text=True)
    return time.perf_counter() - start, done


def run_job(script: Path, spec: dict, importtime: bool = False) -> tuple[float, dict, str]:
    seconds, done = wall([sys.executable, *(["-X", "importtime"] if importtime else []), str(script), json.dumps(spec)])
    lines = [line for line in done.stdout.splitlines() if line.startswith("STARTUP ")]
    if done.returncode or not lines:
        raise SystemExit(f"{spec['rule']} with {spec['code']} failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads(lines[-1][len("STARTUP "):]), done.stderr


def import_shares(stderr: str, phase: str, top: int = 6) -> str:
    """-X importtime self time of one phase of the child, summed per top-level package."""
    parts = stderr.split("STARTUP-MARK ")
    text = next((p for p in parts if p.startswith(phase + "\n")), "")
    per: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("import time:") and "|" in line:
            self_us, _, name = (field.strip() for field in line[len("import time:"):].split("|"))
            if self_us.isdigit():
                per[name.split(".")[0]] = per.get(name.split(".")[0], 0.0) + int(self_us) / 1e6
    ranked = sorted(per.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} {s:.2f}" for name, s in ranked[:top] if s >= 0.01) or "-"


def fingerprints(code: Path, specs: dict[str, str]) -> dict[str, str]:
    """The code fingerprint (core/code.py) of each rule's stage module in the checkout at `code`."""
    probe = ("import json, sys; sys.path.insert(0, sys.argv[1]); from workflow_scripts.core import code; "
             "print(json.dumps({r: code.fingerprint(code.split_spec(s)[0]) for r, s in json.loads(sys.argv[2]).items()}))")
    return json.loads(subprocess.run([sys.executable, "-c", probe, str(code), json.dumps(specs)], capture_output=True,
                                     text=True, check=True).stdout)


def safetensors_dtypes(folder: Path) -> dict[str, int]:
    """dtype -> tensor count over a model folder's safetensors files (read from their headers)."""
    counts: dict[str, int] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for name, entry in header.items():
            if name != "__metadata__":
                counts[entry["dtype"]] = counts.get(entry["dtype"], 0) + 1
    return counts


def study_inputs(study: Path, config: dict) -> dict:
    """The study's converted model, encoder, first prompt and first text, as the children read them."""
    import pyarrow.parquet as pq

    from workflow_scripts.core import paths

    model, task = config["study"]["models"][0], config["study"]["tasks"][0]
    manifest = study / paths.model_manifest(model)
    if not manifest.is_file():
        raise SystemExit(f"{study}: no converted model at {manifest} (resources/models is made by the study's "
                         "prepare_model job: run the study first, or pass --study a finished study's folder)")
    prompts = study / paths.prompts(model, task, config["study"]["seeds"][0], "random")
    first = pq.read_table(prompts, columns=["input_ids", "label_token_ids"]).slice(0, 1).to_pylist()[0]
    text = pq.read_table(study / paths.task_data(task), columns=["text"]).column("text")[0].as_py()
    return {"model": model, "manifest": str(manifest), "encoder_manifest": str(study / paths.encoder_manifest()),
            "prompt": first, "text": text}


def model_folder_line(manifest: Path, cfg: dict) -> str:
    from workflow_scripts.sources import manifests

    folder = Path(manifests.read_manifest(manifest)["path"])
    model_config = json.loads((folder / "config.json").read_text())
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20
    return (f"model folder {folder}: safetensors {safetensors_dtypes(folder)} ({size:.0f} MiB), config.json dtype "
            f"{model_config.get('dtype', model_config.get('torch_dtype'))}; jobs run extraction.device={cfg['device']}, "
            f"dtype={cfg['dtype']} (auto = float32 on CPU, bfloat16 on CUDA)")


def main(argv: list[str] | None = None) -> None:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="HEAD", help="git revision of the code to compare against (default: HEAD)")
    parser.add_argument("--study", default="/work/before", help="a finished study's folder (holding resources/ and results/)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rules", nargs="+", help="rules to measure (default: every rule that runs a stage)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs of each job first (page caches)")
    parser.add_argument("--threads", type=int, help="threads of the model jobs (default: config extraction.threads)")
    parser.add_argument("--no-importtime", action="store_true", help="skip the -X importtime attribution")
    args = parser.parse_args(argv)
    study = Path(args.study).resolve()
    load_start = os.getloadavg()[0]
    sys.path.insert(0, str(REPO))
    from workflow_scripts.core.config import validate_config

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    validate_config(config)  # fills in the schema's defaults, as the workflow does
    cfg = {**config["extraction"], "threads": args.threads or config["extraction"]["threads"]}
    inputs = study_inputs(study, config)
    after_stages = rule_stages(REPO / "rules")
    rules = args.rules or list(after_stages)
    unknown = sorted(set(rules) - set(after_stages))
    if unknown:
        raise SystemExit(f"--rules: no such rule with a stage: {unknown}; known: {sorted(after_stages)}")

    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        tmp = Path(tmp)
        before = checkout(args.before, tmp / "before")
        versions = {"before": (before, rule_stages(before / "rules")), "after": (REPO, after_stages)}
        moved = {name: fingerprints(code, {r: s for r, s in stages.items() if r in rules})
                 for name, (code, stages) in versions.items()}

        interp = statistics.median(wall([sys.executable, "-c", "pass"])[0] for _ in range(max(5, args.repeats)))
        print(f"study {study}; before = {args.before}, after = this checkout; {args.repeats} repeats; model jobs at "
              f"{cfg['threads']} thread(s); seconds (medians); interpreter (`python -c pass`) {interp:.3f} s\n")
        print(model_folder_line(Path(inputs["manifest"]), cfg) + "\n")
        head = (f"{'rule':20} {'version':7} {'preamble':>8} {'entry':>6} {'stage imp':>9} {'work imp':>8} {'load':>6} "
                f"{'1st':>6} {'2nd':>6} {'exit':>6} {'total':>7} {'ratio':>6}")
        print(head)
        notes = []
        for rule in rules:
            medians, extra = {}, {}
            runs = {name: [] for name in versions}
            scripts = {}
            for name, (code, stages) in versions.items():
                if rule not in stages:
                    continue
                module, _, function = stages[rule].partition(":")
                script = tmp / f"{rule}-{name}.py"
                script.write_text(preamble(rule, config, cfg["threads"], tmp / "logs" / f"{rule}.log") + CHILD)
                scripts[name] = (script, {"rule": rule, "code": str(code), "module": f"workflow_scripts.{module}",
                                          "function": function, "heavy": HEAVY, "work": WORK.get(rule), "cfg": cfg,
                                          **inputs})
            for _ in range(args.warmup):  # page caches and .pyc files, not measured
                for script, spec in scripts.values():
                    run_job(script, spec)
            for r in range(args.repeats):
                for name in list(scripts)[:: 1 if r % 2 == 0 else -1]:
                    runs[name].append(run_job(*scripts[name])[:2])
            for name, got in runs.items():
                if not got:
                    print(f"{rule:20} {name:7} (no such rule in this version)")
                    continue
                med = {k: statistics.median(parts[k] for _, parts in got) for k in COMPONENTS if k in got[0][1]}
                total = statistics.median(seconds for seconds, _ in got)
                med["exit"] = total - interp - sum(med.values())
                medians[name] = (med, total)
                extra[name] = got[-1][1]
            for name, (med, total) in medians.items():
                ratio = f"{total / medians['before'][1]:6.2f}" if name == "after" and "before" in medians else ""
                cells = " ".join(f"{med[k]:{w}.2f}" if k in med else f"{'-':>{w}}"
                                 for k, w in zip((*COMPONENTS, "exit"), (8, 6, 9, 8, 6, 6, 6, 6)))
                print(f"{rule:20} {name:7} {cells} {total:7.2f} {ratio}", flush=True)
            line = [f"{rule}: stage import loads " + ", ".join(
                f"{name} [{' '.join(extra[name]['loaded']) or '-'}]" for name in extra)]
            if extra.get("after", {}).get("work_loaded"):
                line.append(f"  its work adds [{' '.join(extra['after']['work_loaded'])}]")
            if "load_rss_mib" in extra.get("after", {}):
                line.append(f"  model load: resident memory +{extra['after']['load_rss_mib']:.0f} MiB, parameters "
                            f"{extra['after']['param_dtypes']}")
            if not args.no_importtime:
                for name, (script, spec) in scripts.items():
                    stderr = run_job(script, spec, importtime=True)[2]
                    line.append(f"  {name} import time by package (s, -X importtime self time): stage "
                                f"{import_shares(stderr, 'stage')}" + (f"; work {import_shares(stderr, 'work')}"
                                                                     if spec["work"] else ""))
            if rule in moved["before"] and rule in moved["after"]:
                same = moved["before"][rule] == moved["after"][rule]
                line.append("  code fingerprint " + ("unchanged" if same else
                                                     f"moves {moved['before'][rule]} -> {moved['after'][rule]} "
                                                     "(its jobs re-run in an existing study)"))
            notes.append("\n".join(line))
        print("\n" + "\n".join(notes))
        print(f"\nload average at the end {os.getloadavg()[0]:.2f} (at the start {load_start:.2f}); other work on the "
              "machine inflates every column alike for both versions")


if __name__ == "__main__":
    main()
