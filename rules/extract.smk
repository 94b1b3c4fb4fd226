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


# Contextual calibration of Table 2's held-out prompts: each again with a content-free query (one
# forward per content-free input); the ICL label logits come from the shards.
rule calibrate:
    input:
        unpack(prompt_inputs),
        prompts=paths.prompts(),
        shards=shards_of,
    output:
        paths.analysis("calibration.parquet"),
    params:
        task=task_entry,
        prompts=config["prompts"],
        setting=lambda wc: config["settings"][wc.setting],
        heldout=heldout_params,
        content_free=config["calibration"]["content_free"],
        analysis=analysis_params("n_select", "n_heldout"),
        split_seed=heldout_split_seed,
        extraction=extraction_params("device", "dtype"),
    threads: config["extraction"]["threads"]
    resources:
        **model_job_resources(calibration_prompts),
    benchmark:
        paths.benchmark("calibrate", "{model}", "{task}", "seed{seed}", "{setting}"),
    log:
        paths.log("calibrate", "{model}", "{task}", "seed{seed}", "{setting}"),
    conda:
        "../envs/gpu.yaml"
    script:
        stage("model.calibration:from_snakemake")
