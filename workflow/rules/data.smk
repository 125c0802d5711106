# Data stages: toy world (embedded default only), downloads, normalisation, training parquet.

if "toyworld" in CFG:

    rule toyworld:
        input:
            stage_inputs("toyworld"),
        output:
            directory(str(paths.toyworld_dir(CFG))),
        params:
            config=CONFIG_PATH,
            cfg=stage_params("toyworld"),
        log:
            "logs/toyworld.log",
        threads: stage_threads("toyworld")
        resources:
            **stage_resources("toyworld"),
        conda:
            "../../envs/data.yaml"
        shell:
            "research-rl toyworld --config {params.config} > {log} 2>&1"


rule download_corpus:
    input:
        stage_inputs("download_corpus"),
    output:
        str(paths.corpus_path(CFG)),
    params:
        config=CONFIG_PATH,
        cfg=stage_params("download_corpus"),
    log:
        "logs/download_corpus.log",
    threads: stage_threads("download_corpus")
    resources:
        **stage_resources("download_corpus"),
    conda:
        "../../envs/data.yaml"
    shell:
        "research-rl download-corpus --config {params.config} > {log} 2>&1"


rule download_qa:
    input:
        stage_inputs("download_qa"),
    output:
        rrl.find_stage(CFG, "download_qa").outs,
    params:
        config=CONFIG_PATH,
        cfg=stage_params("download_qa"),
    log:
        "logs/download_qa.log",
    threads: stage_threads("download_qa")
    resources:
        **stage_resources("download_qa"),
    conda:
        "../../envs/data.yaml"
    shell:
        "research-rl download-qa --config {params.config} > {log} 2>&1"


rule normalize_qa:
    input:
        stage_inputs("normalize_qa"),
    output:
        rrl.find_stage(CFG, "normalize_qa").outs,
    params:
        config=CONFIG_PATH,
        cfg=stage_params("normalize_qa"),
    log:
        "logs/normalize_qa.log",
    threads: stage_threads("normalize_qa")
    resources:
        **stage_resources("normalize_qa"),
    conda:
        "../../envs/data.yaml"
    shell:
        "research-rl normalize-qa --config {params.config} > {log} 2>&1"


rule prepare_train:
    priority: 10  # train_grpo's (train.smk): Snakemake does not pass a priority on to a job's inputs
    input:
        stage_inputs("prepare_train"),
    output:
        train=str(paths.train_parquet(CFG, "train", "{model}")),
        dev=str(paths.train_parquet(CFG, "dev", "{model}")),
    params:
        config=CONFIG_PATH,
        cfg=stage_params("prepare_train"),
    log:
        "logs/prepare_train/{model}.log",
    threads: stage_threads("prepare_train")
    resources:
        **stage_resources("prepare_train"),
    conda:
        "../../envs/data.yaml"
    shell:
        "research-rl prepare-train --config {params.config} --model {wildcards.model} > {log} 2>&1"
