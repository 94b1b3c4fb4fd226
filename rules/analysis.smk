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
    log:
        paths.log("reconstruct", "{model}", "{task}", "seed{seed}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        STEP


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
    log:
        paths.log("attention_map", "{model}", "{task}", "seed{seed}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        STEP


rule similarity:
    input:
        prompts=paths.prompts(),
        shards=shards_of,
        zero_shot=paths.zero_shot(),
    output:
        paths.analysis("similarity.parquet"),
    group:
        "analysis"
    log:
        paths.log("similarity", "{model}", "{task}", "seed{seed}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        STEP


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
    log:
        paths.log("probes", "{model}", "{task}", "seed{seed}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        STEP


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
        split_seed=config["prompts"]["split_seed"],
        content_free=config["calibration"]["content_free"] if config["calibration"]["enabled"] else [],
    group:
        "analysis"
    log:
        paths.log("heldout", "{model}", "{task}", "seed{seed}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        STEP


rule table2:
    input:
        lambda wc: [paths.analysis("heldout.parquet", wc.model, wc.task, s, wc.setting) for s in STUDY["seeds"]],
    output:
        paths.over_seeds("table2.parquet"),
    params:
        seeds=STUDY["seeds"],
        **analysis_params("bootstrap_resamples", "bootstrap_seed"),
    group:
        "analysis"
    log:
        paths.log("table2", "{model}", "{task}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        STEP
