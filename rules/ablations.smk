# Stage 6: the Section 4.2 insights as experiments, one job per model x ablation.


rule ablation:
    input:
        unpack(ablation_inputs),
    output:
        rows=paths.ablation("prompts.parquet"),
        summary=paths.ablation("summary.parquet"),
    params:
        sets=ablation_sets,
        heldout=ablation_heldout,
        embeddings=ablation_embeddings,
        kind=lambda wc: config["ablations"][wc.ablation]["kind"],
        baseline=lambda wc: config["ablations"][wc.ablation]["baseline"],
        n_classes={task: len(cfg["classes"]) for task, cfg in config["tasks"].items()},
        analysis=analysis_params("bootstrap_resamples", "bootstrap_seed", "ablation_prompts"),
    group:
        "analysis"
    benchmark:
        paths.benchmark("ablation", "{model}", "{ablation}"),
    log:
        paths.log("ablation", "{model}", "{ablation}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("analysis.ablation:from_snakemake")
