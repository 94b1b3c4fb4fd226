# Stage 7: the causal check beyond the paper. Edits at the last prompt token in the heads Table 2's
# select split ranks, on its held-out prompts; one job per model x task x seed of interventions.setting.


rule interventions:
    input:
        prompts=paths.prompts(),
        shards=shards_of,
        reconstruction=paths.analysis("reconstruction.parquet"),
        manifest=paths.model_manifest(),
    output:
        paths.analysis("interventions.parquet"),
    params:
        interventions=intervention_params(),
        analysis=analysis_params("n_select", "n_heldout"),
        split_seed=heldout_split_seed,
        extraction=extraction_params("device", "dtype"),
    threads: config["extraction"]["threads"]
    resources:
        **model_job_resources(intervention_prompts),
    benchmark:
        paths.benchmark("interventions", "{model}", "{task}", "seed{seed}", "{setting}"),
    log:
        paths.log("interventions", "{model}", "{task}", "seed{seed}", "{setting}"),
    conda:
        "../envs/gpu.yaml"
    script:
        stage("causal.interventions:from_snakemake")


rule report_interventions:
    input:
        seeds_of("interventions.parquet"),
    output:
        figure=set_result("interventions.png", "Causal check", "Figure: edits in kernel heads vs. random heads"),
        html=set_result("interventions_table.html", "Causal check", "Table: every measure with 95% CIs"),
        csv=paths.report_set("interventions.csv"),
        piece=paths.report_set("interventions.md"),
    params:
        seeds=STUDY["seeds"],
        analysis=analysis_params("bootstrap_resamples", "bootstrap_seed"),
        dpi=config["report"]["dpi"],
    group:
        "figures"
    benchmark:
        paths.benchmark("report_interventions", "{model}", "{task}", "{setting}"),
    log:
        paths.log("report_interventions", "{model}", "{task}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("report.interventions:from_snakemake")
