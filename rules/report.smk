# Stage 8: the report. One rule per figure per model x task x setting (over its seeds), per ablation
# and for Theorem 1, so a changed analysis re-renders only its own figure. Each writes its figure and
# table, flagged for the HTML report (`snakemake --report`; captions in report/), and its piece of
# results/report.md, which the `report` rule assembles.
from workflow_scripts.report import costs


rule report_table2:
    input:
        table=paths.over_seeds("table2.parquet"),
        health=paths.over_seeds("health.parquet"),
    output:
        html=set_result("table2.html", "5.5 Table 2", "Table 2: held-out reconstruction"),
        csv=paths.report_set("table2.csv"),
        piece=paths.report_set("table2.md"),
    params:
        paper=paper.for_captions,  # the captions' numbers (not recorded: see core/paper.py)
        encoder=config["encoder"]["name"],
        per_seed_split=config["analysis"]["heldout_per_seed"],
    group:
        "figures"
    benchmark:
        paths.benchmark("report_table2", "{model}", "{task}", "{setting}"),
    log:
        paths.log("report_table2", "{model}", "{task}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("report.table2:from_snakemake")


rule report_attention:
    input:
        maps=seeds_of("attention_map.parquet"),
        label_mass=seeds_of("label_mass.parquet"),
    output:
        figure=set_result("attention.png", "5.1 Attention map", "Fig. 2: averaged attention"),
        html=set_result("label_mass.html", "5.1 Attention map", "Table: attention on label tokens per layer"),
        csv=paths.report_set("label_mass.csv"),
        piece=paths.report_set("attention.md"),
    params:
        dpi=config["report"]["dpi"],
    group:
        "figures"
    benchmark:
        paths.benchmark("report_attention", "{model}", "{task}", "{setting}"),
    log:
        paths.log("report_attention", "{model}", "{task}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("report.attention:from_snakemake")


rule report_heads:
    input:
        heads=seeds_of("heads.parquet"),
        query_swap=query_swap_tables,
    output:
        figure=set_result("heads.png", "5.2 Heads as kernels", "Fig. 3: per-head heatmaps"),
        html=set_result("top_heads.html", "5.2 Heads as kernels", "Table: best heads"),
        csv=paths.report_set("top_heads.csv"),
        piece=paths.report_set("heads.md"),
    params:
        paper=paper.for_captions,  # the captions' numbers (not recorded: see core/paper.py)
        seeds=STUDY["seeds"],
        dpi=config["report"]["dpi"],
        top_head_fraction=config["analysis"]["top_head_fraction"],
    group:
        "figures"
    benchmark:
        paths.benchmark("report_heads", "{model}", "{task}", "{setting}"),
    log:
        paths.log("report_heads", "{model}", "{task}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("report.heads:from_snakemake")


rule report_similarity:
    input:
        similarity=seeds_of("similarity.parquet"),
        heads=seeds_of("heads.parquet"),
    output:
        figure=set_result("similarity.png", "5.3 Prediction similarity", "Fig. 4: kernel vs. prediction similarity"),
        html=set_result("similarity_heads.html", "5.3 Prediction similarity", "Table: best heads"),
        csv=paths.report_set("similarity_heads.csv"),
        piece=paths.report_set("similarity.md"),
    params:
        dpi=config["report"]["dpi"],
    group:
        "figures"
    benchmark:
        paths.benchmark("report_similarity", "{model}", "{task}", "{setting}"),
    log:
        paths.log("report_similarity", "{model}", "{task}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("report.similarity:from_snakemake")


rule report_probes:
    input:
        probes=seeds_of("probes.parquet"),
    output:
        figure=set_result("probes.png", "5.4 Probes", "Fig. 5: probes on keys and values"),
        html=set_result("probe_summary.html", "5.4 Probes", "Table: best offsets and heads"),
        csv=paths.report_set("probe_summary.csv"),
        piece=paths.report_set("probes.md"),
    params:
        dpi=config["report"]["dpi"],
    group:
        "figures"
    benchmark:
        paths.benchmark("report_probes", "{model}", "{task}", "{setting}"),
    log:
        paths.log("report_probes", "{model}", "{task}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("report.probes:from_snakemake")


rule report_ablation:
    input:
        paths.ablation("summary.parquet"),
    output:
        figure=ablation_result("png", "ablation", "Figure: settings with 95% CIs"),
        html=ablation_result("html", "ablation_table", "Table: means per setting, verdict"),
        csv=paths.report_ablation("csv"),
        piece=paths.report_ablation("md"),
    params:
        kind=lambda wc: config["ablations"][wc.ablation]["kind"],
        baseline=lambda wc: config["ablations"][wc.ablation]["baseline"],
        dpi=config["report"]["dpi"],
    group:
        "figures"
    benchmark:
        paths.benchmark("report_ablation", "{model}", "{ablation}"),
    log:
        paths.log("report_ablation", "{model}", "{ablation}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("report.ablations:from_snakemake")


rule report_theory:
    input:
        table=paths.theory("table.parquet"),
        summary=paths.theory("summary.md"),
        # The theory rule draws this figure; it enters the HTML report here, beside its table.
        figure=report(
            paths.theory("convergence.png"),
            caption="../report/theory.rst",
            category="Theorem 1",
            subcategory="synthetic HMMs",
            labels={"result": "Figure: kernel regression vs. posterior over n"},
        ),
    output:
        html=report(
            paths.report_figure("theory.html"),
            caption="../report/theory_table.rst",
            category="Theorem 1",
            subcategory="synthetic HMMs",
            labels={"result": "Table: beside the paper's Table 3"},
        ),
        csv=paths.report_figure("theory.csv"),
        piece=paths.report_figure("theory.md"),
    group:
        "figures"
    params:
        paper=paper.for_captions,  # the captions' numbers (not recorded: see core/paper.py)
    benchmark:
        paths.benchmark("report_theory"),
    log:
        paths.log("report_theory"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("report.theory:from_snakemake")


rule report:
    localrule: True
    input:
        table2=report_sets("table2.md"),
        table2_tables=over_seeds_outputs("table2.parquet"),
        attention=report_sets("attention.md"),
        heads=report_sets("heads.md"),
        similarity=report_sets("similarity.md"),
        probes=report_sets("probes.md") if config["extraction"]["kv_layers"] else [],
        summaries=[paths.analysis("summary.parquet", m, t, s, st) for m, t, st in over_seeds_keys() for s in STUDY["seeds"]],
        ablations=[paths.report_ablation("md", m, a) for m in STUDY["models"] for a in config["ablations"]],
        interventions=[paths.report_set("interventions.md", *key) for key in intervention_keys()],
        theory=paths.report_figure("theory.md"),
        models=[paths.report_figure("models.md")] if len(STUDY["models"]) > 1 else [],
        costs=costs.PIECE,
    output:
        paths.report(),
    params:
        sets=over_seeds_keys(),
        ablations=list(config["ablations"]),
        title=config["report"]["title"],
        study={
            **{key: STUDY[key] for key in ("models", "tasks", "seeds", "settings")},
            **{key: config["prompts"][key] for key in ("n_eval", "k", "prepend_bos")},
            **analysis_params("n_select", "n_heldout"),
        },
    benchmark:
        paths.benchmark("report", "report"),
    log:
        paths.log("report", "report"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("report.assemble:from_snakemake")


# Where the time goes (the appendix of results/report.md): job-seconds and peak memory per rule, from
# the benchmark files of the study's jobs. Its inputs are the report's own, so it runs after every other
# job; which jobs are the study's is the workflow's answer (report/costs.py walks the rules from
# report.md down, as Snakemake builds the DAG), never a listing of logs/, so no benchmark file of an
# earlier config's jobs is read. A job that re-runs rewrites a report input, and a change of the
# study's jobs changes params.jobs: either re-runs this one.
rule report_costs:
    input:
        lambda wildcards: costs.report_inputs(workflow.rules),
    output:
        csv=costs.TABLE,
        piece=costs.PIECE,
    params:
        jobs=lambda wildcards: costs.study_benchmarks(workflow.rules),
    benchmark:
        paths.benchmark("report_costs"),
    log:
        paths.log("report_costs"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("report.costs:from_snakemake")


# Beyond the paper: every model's Table 2 and the depth of its top heads side by side, and which
# findings hold in every model (studies of two models or more).
rule report_models:
    input:
        tables=over_seeds_outputs("table2.parquet"),
        heads=[paths.analysis("heads.parquet", m, t, s, st) for m, t, st in over_seeds_keys() for s in STUDY["seeds"]],
        interventions=[paths.report_set("interventions.csv", *key) for key in intervention_keys()],
    output:
        figure=report(
            paths.report_figure("models.png"),
            caption="../report/models.rst",
            category="Models side by side",
            subcategory="every model",
            labels={"result": "Figure: head agreement against depth"},
        ),
        html=report(
            paths.report_figure("models.html"),
            caption="../report/models_table.rst",
            category="Models side by side",
            subcategory="every model",
            labels={"result": "Table: Table 2 and head depth per model"},
        ),
        csv=paths.report_figure("models.csv"),
        piece=paths.report_figure("models.md"),
    params:
        paper=paper.for_captions,  # the captions' numbers (not recorded: see core/paper.py)
        sets=over_seeds_keys(),
        seeds=STUDY["seeds"],
        models=STUDY["models"],
        interventions=intervention_keys(),
        top_head_fraction=config["analysis"]["top_head_fraction"],
        dpi=config["report"]["dpi"],
    group:
        "figures"
    benchmark:
        paths.benchmark("report_models"),
    log:
        paths.log("report_models"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("report.models:from_snakemake")


# The stages' warnings end up in their job logs; say them on the console too, when the run ends.
onsuccess:
    print_run_warnings()


onerror:
    print_run_warnings()
