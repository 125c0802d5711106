# The embedded default's tiny base model, and GRPO training: one job per `models:` entry.
#
# train_grpo declares only <model>/final: checkpoints and metrics.jsonl beside it are never outputs,
# so Snakemake does not delete them when a job fails and a rerun resumes from the last checkpoint.

if "base_model" in CFG:

    rule build_base_model:
        input:
            stage_inputs("build_base_model"),
        output:
            directory(str(paths.base_model_dir(CFG))),
        params:
            config=CONFIG_PATH,
            cfg=stage_params("build_base_model"),
        log:
            "logs/build_base_model.log",
        threads: stage_threads("build_base_model")
        resources:
            **stage_resources("build_base_model"),
        conda:
            "../../envs/train.yaml"
        shell:
            "research-rl build-base-model --config {params.config} > {log} 2>&1"


# The longest job: scheduled before the evaluations that are ready with it, so that it trains on one
# core while they share the other. launch-train runs train-grpo in-process when grpo.num_nodes x
# gpus_per_node is 1, else under `accelerate launch` (and srun, one launcher per node, when num_nodes > 1).
rule train_grpo:
    priority: 10
    input:
        stage_inputs("train_grpo"),
    output:
        directory(str(paths.trained_model_final(CFG, "{model}"))),
    params:
        config=CONFIG_PATH,
        cfg=stage_params("train_grpo"),
    log:
        "logs/train_grpo/{model}.log",
    threads: stage_threads("train_grpo")
    resources:
        **stage_resources("train_grpo"),
    conda:
        rrl_cluster.conda_env(CFG, "train_grpo", "train")
    shell:
        "research-rl launch-train --config {params.config} --model {wildcards.model} > {log} 2>&1"
