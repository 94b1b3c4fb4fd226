# Stage 8: results/report.md with tables and figures over every prompt set of the study.


rule report:
    input:
        heads=analysis_outputs("heads.parquet"),
        summaries=analysis_outputs("summary.parquet"),
        maps=analysis_outputs("attention_map.parquet"),
        label_mass=analysis_outputs("label_mass.parquet"),
        similarity=analysis_outputs("similarity.parquet"),
        probes=analysis_outputs("probes.parquet") if config["extraction"]["kv_layers"] else [],
        table2=over_seeds_outputs("table2.parquet"),
        ablations=ablation_outputs("summary.parquet"),
        theory=paths.theory("summary.md"),
        theory_figure=paths.theory("convergence.png"),
    output:
        report=paths.report(),
        figures=directory(paths.report_figure("")),
    params:
        sets=prompt_sets(),
        table2_keys=over_seeds_keys(),
        study={
            **STUDY,
            **{key: config["prompts"][key] for key in ("n_eval", "k")},
            **analysis_params("n_select", "n_heldout"),
            "encoder": config["encoder"]["name"],
        },
        options=config["report"],
        top_head_fraction=config["analysis"]["top_head_fraction"],
        ablations=config["ablations"],
    log:
        paths.log("report", "report"),
    conda:
        "../envs/cpu.yaml"
    script:
        STEP
