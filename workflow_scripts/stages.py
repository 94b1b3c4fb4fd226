"""Which stage module runs each rule. Kept out of step.py on purpose: Snakemake re-runs every job
whose script changed, so a rule added here must not touch the script all rules share."""

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
