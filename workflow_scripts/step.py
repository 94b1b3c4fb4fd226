"""The one script every rule runs: set up the job's log, then call its stage's from_snakemake.

Snakemake runs this file in a fresh Python process with a `snakemake` object in scope.
"""
import contextlib
import importlib
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# rule name -> module of workflow_scripts whose from_snakemake(snakemake) does the work
STAGES = {
    "fetch_task_source": "data",
    "prepare_task": "data",
    "prepare_model": "models",
    "build_prompts": "prompts",
    "extract_shard": "extract",
    "prepare_encoder": "encoder",
    "embed_task": "encoder",
    "zero_shot": "zero_shot",
    "calibrate": "calibration",
    "reconstruct": "reconstruction",
    "attention_map": "attention_map",
    "similarity": "similarity",
    "probes": "probes",
    "heldout": "heldout",
    "table2": "table2",
    "ablation": "ablation",
    "interventions": "interventions",
    "theory": "theory",
    "report_table2": "report",
    "report_attention": "report",
    "report_heads": "report",
    "report_similarity": "report",
    "report_probes": "report",
    "report_ablation": "ablation_report",
    "report_theory": "report",
    "report_models": "model_comparison",
    "report_interventions": "interventions_report",
    "report": "report",
}


def run(smk) -> None:
    log_path = Path(smk.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        logging.basicConfig(stream=log, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
        try:
            importlib.import_module(f"workflow_scripts.{STAGES[smk.rule]}").from_snakemake(smk)
        except Exception:
            logging.exception("rule %s failed", smk.rule)
            raise


run(snakemake)  # noqa: F821  (injected by Snakemake)
