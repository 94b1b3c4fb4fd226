# Stage 5: the kernel readings of the last token's attention (Sections 5.1 and 5.2).


rule reconstruct:
    input:
        prompts=paths.prompts(),
        shards=shards_of,
    output:
        heads=paths.analysis("heads.parquet"),
        summary=paths.analysis("summary.parquet"),
    params:
        n_classes=lambda wc: len(config["tasks"][wc.task]["classes"]),
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
        paths.analysis("attention_map.parquet"),
    params:
        resample_length=config["analysis"]["resample_length"],
    log:
        paths.log("attention_map", "{model}", "{task}", "seed{seed}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        STEP
