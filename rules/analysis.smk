# Stage 5: the paper's analyses of the last token's attention, Sections 5.1-5.5, one rule each.


rule reconstruct:
    input:
        prompts=paths.prompts(),
        shards=shards_of,
    output:
        reconstruction=paths.analysis("reconstruction.parquet"),
        heads=paths.analysis("heads.parquet"),
        summary=paths.analysis("summary.parquet"),
    params:
        n_classes=n_classes,
    group:
        "analysis"
    benchmark:
        paths.benchmark("reconstruct", "{model}", "{task}", "seed{seed}", "{setting}"),
    log:
        paths.log("reconstruct", "{model}", "{task}", "seed{seed}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("analysis.reconstruction:from_snakemake")


rule attention_map:
    input:
        prompts=paths.prompts(),
        shards=shards_of,
    output:
        map=paths.analysis("attention_map.parquet"),
        label_mass=paths.analysis("label_mass.parquet"),
    params:
        resample_length=config["analysis"]["resample_length"],
    group:
        "analysis"
    benchmark:
        paths.benchmark("attention_map", "{model}", "{task}", "seed{seed}", "{setting}"),
    log:
        paths.log("attention_map", "{model}", "{task}", "seed{seed}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("analysis.attention_map:from_snakemake")


rule similarity:
    input:
        prompts=paths.prompts(),
        shards=shards_of,
        zero_shot=paths.zero_shot(),
    output:
        paths.analysis("similarity.parquet"),
    group:
        "analysis"
    benchmark:
        paths.benchmark("similarity", "{model}", "{task}", "seed{seed}", "{setting}"),
    log:
        paths.log("similarity", "{model}", "{task}", "seed{seed}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("analysis.similarity:from_snakemake")


rule probes:
    input:
        prompts=paths.prompts(),
        shards=shards_of,
        zero_shot=paths.zero_shot(),
    output:
        paths.analysis("probes.parquet"),
    params:
        n_classes=n_classes,
        analysis=analysis_params("probe_ridge", "probe_folds"),
    group:
        "analysis"
    benchmark:
        paths.benchmark("probes", "{model}", "{task}", "seed{seed}", "{setting}"),
    log:
        paths.log("probes", "{model}", "{task}", "seed{seed}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("analysis.probes:from_snakemake")


# Beside Fig. 3: the same demonstrations with another held-out query (analysis.query_swap_setting).
rule query_swap:
    input:
        unpack(query_swap_inputs),
        prompts=paths.prompts(),
        shards=shards_of,
    output:
        paths.analysis("query_swap.parquet"),
    params:
        n_classes=n_classes,
    group:
        "analysis"
    benchmark:
        paths.benchmark("query_swap", "{model}", "{task}", "seed{seed}", "{setting}"),
    log:
        paths.log("query_swap", "{model}", "{task}", "seed{seed}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("analysis.query_swap:from_snakemake")


# Contextual calibration of every prompt of a Table 2 set (Table 2 reads its held-out ones) from the
# label logits of its content-free twins, which the extraction ran over its own demonstrations.
rule calibrate:
    input:
        prompts=paths.prompts(),
        shards=shards_of,
    output:
        paths.analysis("calibration.parquet"),
    params:
        content_free=calibration_texts(config),
    group:
        "analysis"
    benchmark:
        paths.benchmark("calibrate", "{model}", "{task}", "seed{seed}", "{setting}"),
    log:
        paths.log("calibrate", "{model}", "{task}", "seed{seed}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("analysis.calibration:from_snakemake")


rule heldout:
    input:
        unpack(calibration_input),
        prompts=paths.prompts(),
        reconstruction=paths.analysis("reconstruction.parquet"),
        zero_shot=paths.zero_shot(),
        embeddings=paths.embeddings(),
    output:
        paths.analysis("heldout.parquet"),
    params:
        n_classes=n_classes,
        encoder=config["encoder"]["name"],
        analysis=analysis_params("n_select", "n_heldout"),
        split_seed=heldout_split_seed,
        content_free=calibration_texts(config) if config["calibration"]["enabled"] else [],
    group:
        "analysis"
    benchmark:
        paths.benchmark("heldout", "{model}", "{task}", "seed{seed}", "{setting}"),
    log:
        paths.log("heldout", "{model}", "{task}", "seed{seed}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("analysis.heldout:from_snakemake")


rule table2:
    input:
        heldout=seeds_of("heldout.parquet"),
        heads=seeds_of("heads.parquet"),
        query_swap=query_swap_tables,
    output:
        table=paths.over_seeds("table2.parquet"),
        health=paths.over_seeds("health.parquet"),
    params:
        seeds=STUDY["seeds"],
        classes=lambda wc: config["tasks"][wc.task]["classes"],
        **analysis_params("bootstrap_resamples", "bootstrap_seed"),
    group:
        "analysis"
    benchmark:
        paths.benchmark("table2", "{model}", "{task}", "{setting}"),
    log:
        paths.log("table2", "{model}", "{task}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("analysis.table2:from_snakemake")
