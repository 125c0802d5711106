# One job per (model, benchmark, method) cell: baselines on evaluation.baseline_models, `research`
# on every trained model. Only metrics.json is declared: predictions.jsonl beside it is the resumable
# record of finished questions and survives a failed or killed job.


rule evaluate:
    input:
        stage_inputs("evaluate"),
    output:
        str(paths.eval_dir(CFG, "{model}", "{benchmark}", "{method}") / "metrics.json"),
    params:
        config=CONFIG_PATH,
        cfg=stage_params("evaluate"),
    log:
        "logs/evaluate/{model}/{benchmark}/{method}.log",
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    conda:
        rrl_cluster.conda_env(CFG, "evaluate", "eval")
    shell:
        "research-rl evaluate --config {params.config} --model {wildcards.model}"
        " --benchmark {wildcards.benchmark} --method {wildcards.method} > {log} 2>&1"
