"""The heaviest readers of intermediate tables, before and after they became lazy polars scans,
side by side in one run, on shards of config/paper_size.yaml's size.

    python benchmarks/readers.py                       # the study in ./results, against c8b272c
    python benchmarks/readers.py --before c8b272c --study results --repeats 3

The inputs are one real prompt set of a finished study (the default's first task, seed and the
random setting: its prompts, extraction shards, zero-shot table and embeddings), repeated to
prompts.n_eval = 700 prompts in shards of extraction.shard_size = 80, as config/paper_size.yaml
runs it. Each stage then runs through its own write function, as its rule runs it, once with the
code of `--before` (checked out into a temporary folder) and once with this checkout's, in a
fresh interpreter each, alternating repeat by repeat so that drift in the machine's speed falls on
both alike:

- reconstruct: every head's kernel reading and R^2 (analysis.reconstruction.write_scores)
- similarity: kernel vs. prediction similarity (analysis.similarity.write_similarity)
- probes: the kept key/value vectors (analysis.probes.write_probes)
- ablation: one ablation over two settings of the set (analysis.ablation.write_ablation)
- report tables: the heads section over three seeds (report.heads) and Table 2's (report.table2)

For each it prints the median seconds of the stage call, the peak resident memory of the process
(VmHWM) and that peak above what the interpreter held after its imports, and the ratios after /
before. The stages' output files of both versions are compared byte for byte: a reader that reads
less must not change what is computed from it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from checkout import checkout  # benchmarks/checkout.py, beside this script

REPO = Path(__file__).resolve().parents[1]
PAPER_PROMPTS = 700  # config/paper_size.yaml: prompts.n_eval
SHARD_SIZE = 80  # config.yaml: extraction.shard_size (paper_size.yaml keeps it)

STAGES = ("reconstruct", "similarity", "probes", "ablation", "report_heads", "report_table2")

# Run in a fresh interpreter with the code under test first on sys.path: sets up, calls the stage,
# prints its seconds and memory as JSON.
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
spec = json.loads(sys.argv[2])

def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

class Files(dict):
    __getattr__ = dict.__getitem__

from workflow_scripts.analysis import ablation, probes, reconstruction, similarity
from workflow_scripts.report import heads, table2
kind, a, out = spec["stage"], spec["inputs"], spec["out"]
def smk(inputs, outputs, params, wildcards):
    return Files(input=Files(inputs), output=Files(outputs), params=Files(params), wildcards=Files(wildcards))
section = dict(csv=out + "/s.csv", html=out + "/s.html", piece=out + "/s.md", figure=out + "/s.png")
set_wildcards = dict(model="smollm2-135m", task=a["task"], setting="random")
runs = {
    "reconstruct": lambda: reconstruction.write_scores(a["prompts"], a["shards"], a["n_classes"], out + "/recon.parquet",
                                                       out + "/heads.parquet", out + "/summary.parquet"),
    "similarity": lambda: similarity.write_similarity(a["prompts"], a["shards"], a["zero_shot"], out + "/similarity.parquet"),
    "probes": lambda: probes.write_probes(a["prompts"], a["shards"], a["zero_shot"], a["n_classes"], a["analysis"], 0,
                                          out + "/probes.parquet"),
    "ablation": lambda: ablation.write_ablation(
        [dict(task=a["task"], seed=0, setting=s, prompts=a["prompts"], shards=a["shards"]) for s in ("random", "again")],
        {a["task"] + "/0": a["heldout"]}, {a["task"]: a["embeddings"]}, "order", "random", {a["task"]: a["n_classes"]},
        a["analysis"], out + "/rows.parquet", out + "/summary.parquet"),
    "report_heads": lambda: heads.from_snakemake(smk(
        dict(heads=[a["heads"]] * 3, query_swap=[]), section,
        dict(seeds=[0, 1, 2], dpi=60, top_head_fraction=a["analysis"]["top_head_fraction"]), set_wildcards)),
    "report_table2": lambda: table2.from_snakemake(smk(
        dict(table=a["table2"], health=a["health"]), {k: v for k, v in section.items() if k != "figure"},
        dict(encoder="encoder", per_seed_split=False), set_wildcards)),
}
base = status_kib("VmRSS")
start = time.perf_counter()
runs[kind]()
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mib": status_kib("VmHWM") / 1024, "imports_mib": base / 1024}))
"""


def paper_size_inputs(study: Path, folder: Path, code: Path) -> dict:
    """The benchmark's inputs: one prompt set of `study` repeated to PAPER_PROMPTS prompts, plus the
    analysis tables the ablation and the report read (computed once, with `code`)."""
    sys.path.insert(0, str(code))
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from workflow_scripts.core import config as study_config
    from workflow_scripts.core import paths, table_io, tables

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    study_config.validate_config(cfg)
    model, task = next(iter(cfg["models"])), next(iter(cfg["tasks"]))
    at = lambda p: str(study / Path(p).relative_to("results"))  # noqa: E731 (paths are relative to a study folder)
    prompts = pq.read_table(at(paths.prompts(model, task, 0, "random")))
    shard_files = sorted(Path(at(paths.prompts(model, task, 0, "random"))).parent.glob("shards/*.parquet"))
    shards = pa.concat_tables([pq.read_table(f) for f in shard_files])
    by_id = {pid: i for i, pid in enumerate(shards.column("prompt_id").to_pylist())}
    source = [i % prompts.num_rows for i in range(PAPER_PROMPTS)]
    ids = pa.array(range(PAPER_PROMPTS), pa.int32())
    big_prompts = prompts.take(source).set_column(prompts.schema.get_field_index("prompt_id"), "prompt_id", ids)
    rows = shards.take([by_id[prompts.column("prompt_id")[i].as_py()] for i in source])
    rows = rows.set_column(rows.schema.get_field_index("prompt_id"), "prompt_id", ids)
    table_io.write_table(big_prompts, tables.PROMPTS, folder / "prompts.parquet")
    shard_out = []
    for n, start in enumerate(range(0, PAPER_PROMPTS, SHARD_SIZE)):
        shard_out.append(str(folder / "shards" / f"{n:03d}.parquet"))
        table_io.write_table(rows.slice(start, SHARD_SIZE), tables.SHARD, shard_out[-1])
    inputs = {
        "task": task, "prompts": str(folder / "prompts.parquet"), "shards": shard_out,
        "zero_shot": at(paths.zero_shot(model, task)), "embeddings": at(paths.embeddings(task)),
        "n_classes": len(cfg["tasks"][task]["classes"]), "analysis": cfg["analysis"],
        "table2": at(paths.over_seeds("table2.parquet", model, task, "random")),
        "health": at(paths.over_seeds("health.parquet", model, task, "random")),
    }
    # The tables later stages read, from the repeated set (with this checkout's code: the same for both).
    from workflow_scripts.analysis import heldout, reconstruction

    reconstruction.write_scores(inputs["prompts"], shard_out, inputs["n_classes"], folder / "recon.parquet",
                                folder / "heads.parquet", folder / "summary.parquet")
    heldout.write_heldout(inputs["prompts"], folder / "recon.parquet", inputs["zero_shot"], inputs["embeddings"], "encoder",
                          inputs["n_classes"], {**cfg["analysis"], "n_select": 400, "n_heldout": 300}, 0, folder / "heldout.parquet")
    inputs.update(heldout=str(folder / "heldout.parquet"), heads=str(folder / "heads.parquet"))
    inputs["analysis"] = {**cfg["analysis"], "ablation_prompts": 100}  # config/paper_size.yaml
    return inputs


def run_stage(code: Path, stage: str, inputs: dict, work: Path, keep: Path) -> dict:
    """One run of `stage` with `code`, writing into `work` (the same folder for both versions, since
    the report's pieces link their figure by path), its outputs then kept in `keep`."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec = json.dumps({"stage": stage, "inputs": inputs, "out": str(work)})
    # One working folder for both versions too: the pieces link their figure relative to it.
    done = subprocess.run([sys.executable, "-c", CHILD, str(code), spec], capture_output=True, text=True, cwd=work.parent)
    if done.returncode:
        raise SystemExit(f"{stage} with {code} failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(keep, ignore_errors=True)
    shutil.copytree(work, keep)
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_outputs(a: Path, b: Path) -> list[str]:
    """Output files whose bytes differ between the two versions (figures aside)."""
    differ = []
    for f in sorted(a.iterdir()):
        if f.suffix != ".png" and f.read_bytes() != (b / f.name).read_bytes():
            differ.append(f.name)
    return differ


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="c8b272c", help="git revision of the code to compare against "
                        "(default: the last commit whose readers load whole tables with pandas)")
    parser.add_argument("--study", default="results", help="a finished default study's results folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    args = parser.parse_args(argv)
    study = Path(args.study).resolve()
    with tempfile.TemporaryDirectory(prefix="readers-bench-") as tmp:
        tmp = Path(tmp)
        before = checkout(args.before, tmp / "before")
        inputs = paper_size_inputs(study, tmp / "inputs", REPO)
        n_bytes = sum(Path(s).stat().st_size for s in inputs["shards"])
        print(f"inputs: {PAPER_PROMPTS} prompts of {study} ({inputs['task']}, seed 0, random) in {len(inputs['shards'])} "
              f"shards, {n_bytes / 2**20:.0f} MiB; before = {args.before}, after = this checkout; {args.repeats} repeats\n")
        print(f"{'stage':14} {'before s':>9} {'after s':>8} {'ratio':>6}  {'before MiB':>10} {'after MiB':>9} {'ratio':>6}"
              f"  {'above imports: before':>21} {'after':>6} {'ratio':>6}  outputs")
        for stage in args.stages:
            got = {"before": [], "after": []}
            for r in range(args.repeats):
                for name, code in (("before", before), ("after", REPO))[:: 1 if r % 2 == 0 else -1]:
                    got[name].append(run_stage(code, stage, inputs, tmp / "work" / stage, tmp / name / stage))
            med = {name: {k: statistics.median(run[k] for run in runs) for k in runs[0]} for name, runs in got.items()}
            above = {name: m["peak_mib"] - m["imports_mib"] for name, m in med.items()}
            differ = same_outputs(tmp / "before" / stage, tmp / "after" / stage)
            print(f"{stage:14} {med['before']['seconds']:9.2f} {med['after']['seconds']:8.2f} "
                  f"{med['after']['seconds'] / med['before']['seconds']:6.2f}  {med['before']['peak_mib']:10.0f} "
                  f"{med['after']['peak_mib']:9.0f} {med['after']['peak_mib'] / med['before']['peak_mib']:6.2f}  "
                  f"{above['before']:21.0f} {above['after']:6.0f} {above['after'] / max(above['before'], 1):6.2f}  "
                  f"{'identical' if not differ else 'DIFFER: ' + ', '.join(differ)}", flush=True)
        shutil.rmtree(tmp / "before", ignore_errors=True)


if __name__ == "__main__":
    main()
