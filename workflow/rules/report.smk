# The paper's tables and the figures from every metrics.json and the training logs.


rule report:
    input:
        stage_inputs("report"),
    output:
        tables=directory(str(paths.tables_dir(CFG))),
        figures=directory(str(paths.figures_dir(CFG))),
    params:
        config=CONFIG_PATH,
        cfg=stage_params("report"),
    log:
        "logs/report.log",
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        "../../envs/report.yaml"
    shell:
        "research-rl report --config {params.config} > {log} 2>&1"
