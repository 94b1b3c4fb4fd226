# Stage 8: results/report.md with tables and figures over every prompt set of the study.


rule report:
    input:
        heads=analysis_outputs("heads.parquet"),
        summaries=analysis_outputs("summary.parquet"),
        maps=analysis_outputs("attention_map.parquet"),
        theory=paths.theory("summary.md"),
        theory_figure=paths.theory("convergence.png"),
    output:
        report=paths.report(),
        figures=directory(paths.report_figure("")),
    params:
        sets=prompt_sets(),
        study={**STUDY, "n_eval": config["prompts"]["n_eval"], "k": config["prompts"]["k"]},
        options=config["report"],
    log:
        paths.log("report", "report"),
    conda:
        "../envs/cpu.yaml"
    script:
        STEP
