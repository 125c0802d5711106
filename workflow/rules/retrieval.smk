# The search index over the corpus (the retriever service loads it inside train and evaluate jobs).


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
