# Stage 2: a loadable model per config entry, described by resources/models/{model}/manifest.json.


rule prepare_model:
    localrule: True
    output:
        manifest=paths.model_manifest(),
    params:
        model=model_source,
        cache=paths.downloads("models"),
    benchmark:
        paths.benchmark("prepare_model", "{model}"),
    log:
        paths.log("prepare_model", "{model}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("sources.models:from_snakemake")
