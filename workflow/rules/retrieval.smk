# The search index over the corpus (the retriever service loads it inside train and evaluate jobs).
# Dense: one embed_shard job per shard of retriever.dense.shard_size passages (a GPU each on Slurm), each
# writing its own files, so a failed or killed run keeps the finished shards; build_index then indexes them.


rule embed_shard:
    input:
        stage_inputs("embed_shard"),
    output:
        rrl.shard_outs(CFG, "{shard}"),
    params:
        config=CONFIG_PATH,
        cfg=stage_params("embed_shard"),
    log:
        "logs/embed_shard-{shard}.log",
    threads: stage_threads("embed_shard")
    resources:
        **stage_resources("embed_shard"),
    conda:
        "../../envs/retrieval.yaml"
    shell:
        "research-rl embed-shard --config {params.config} --shard {wildcards.shard} > {log} 2>&1"


rule build_index:
    input:
        stage_inputs("build_index"),
    output:
        directory(str(paths.index_dir(CFG))),
    params:
        config=CONFIG_PATH,
        cfg=stage_params("build_index"),
    log:
        "logs/build_index.log",
    threads: stage_threads("build_index")
    resources:
        **stage_resources("build_index"),
    conda:
        rrl_cluster.conda_env(CFG, "build_index", "retrieval")
    shell:
        "research-rl build-index --config {params.config} > {log} 2>&1"
