# Stage 4: the model's forward passes, one Parquet shard of last-token outputs per job.


rule extract_shard:
    input:
        prompts=paths.prompts(),
        manifest=paths.model_manifest(),
    output:
        paths.shard(),
    params:
        extraction=extraction_params("shard_size", "device", "dtype", "kv_layers", "kv_max_prompts", "hidden_layers", "hidden_positions", "head_outputs"),
    threads: config["extraction"]["threads"]
    resources:
        **model_job_resources(shard_prompts),
    benchmark:
        paths.benchmark("extract_shard", "{model}", "{task}", "seed{seed}", "{setting}", "{shard}"),
    log:
        paths.log("extract_shard", "{model}", "{task}", "seed{seed}", "{setting}", "{shard}"),
    conda:
        "../envs/gpu.yaml"
    script:
        stage("model.extract:from_snakemake")


rule zero_shot:
    input:
        data=paths.task_data(),
        manifest=paths.model_manifest(),
    output:
        paths.zero_shot(),
    params:
        task=task_entry,
        # The examples alone are tokenized like the prompts, BOS included.
        prompts={**split_config(), "prepend_bos": config["prompts"]["prepend_bos"]},
        extraction=extraction_params("device", "dtype", "zero_shot_top_k"),
    threads: config["extraction"]["threads"]
    resources:
        **model_job_resources(zero_shot_examples),
    # Retrieval prompts wait on these; run them before the long extraction queue.
    priority: 10
    benchmark:
        paths.benchmark("zero_shot", "{model}", "{task}"),
    log:
        paths.log("zero_shot", "{model}", "{task}"),
    conda:
        "../envs/gpu.yaml"
    script:
        stage("model.zero_shot:from_snakemake")

