# Stage 1: task data, fetched (registry or hub) and normalized to resources/data/{task}.parquet.


rule fetch_task_source:
    localrule: True
    output:
        paths.task_source(),
    params:
        task=task_params(*TASK_SOURCE_KEYS),
        cache=paths.downloads("data"),
    benchmark:
        paths.benchmark("fetch_task_source", "{task}"),
    log:
        paths.log("fetch_task_source", "{task}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("sources.data:fetch_from_snakemake")


rule prepare_task:
    input:
        source=task_source_file,
    output:
        paths.task_data(),
    params:
        task=task_params(*TASK_TABLE_KEYS),
    group:
        "prep"
    benchmark:
        paths.benchmark("prepare_task", "{task}"),
    log:
        paths.log("prepare_task", "{task}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("sources.data:prepare_from_snakemake")
