# Stage 2b: the sentence encoder of the kernel-regression baseline, and its embeddings per task.


rule prepare_encoder:
    localrule: True
    output:
        paths.encoder_manifest(),
    params:
        encoder=config["encoder"],
        cache=paths.downloads("encoders"),
    benchmark:
        paths.benchmark("prepare_encoder", "encoder"),
    log:
        paths.log("prepare_encoder", "encoder"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("sources.encoder:from_snakemake")


rule embed_task:
    input:
        data=paths.task_data(),
        manifest=paths.encoder_manifest(),
    output:
        paths.embeddings(),
    params:
        task=task_params("classes"),
        prompts=split_config(),
    threads: 1
    # Retrieval prompts wait on these; run them before the long extraction queue.
    priority: 10
    group:
        "prep"
    benchmark:
        paths.benchmark("embed_task", "{task}"),
    log:
        paths.log("embed_task", "{task}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("model.embedding:from_snakemake")
