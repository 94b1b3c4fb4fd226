# Stage 3: one tokenized prompt set per model x task x seed x setting.


rule build_prompts:
    input:
        unpack(prompt_inputs),
    output:
        paths.prompts(),
    params:
        task=task_entry,
        prompts=prompt_params,
        setting=lambda wc: config["settings"][wc.setting],
        heldout=heldout_params,
    group:
        "prompts"
    benchmark:
        paths.benchmark("build_prompts", "{model}", "{task}", "seed{seed}", "{setting}"),
    log:
        paths.log("build_prompts", "{model}", "{task}", "seed{seed}", "{setting}"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("prompts.build:from_snakemake")
