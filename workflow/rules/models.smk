# Hub models (policies, the dense encoder) into the shared cache paths.models, at the revisions the config
# pins, one job per repo ({repo}: owner--name); later jobs read that cache offline. Absent when every model
# is local (the embedded default).

if "download_models" in {stage.rule for stage in rrl.cached_plan(CFG)}:

    # On the node Snakemake runs on (the login node): compute nodes often have no internet.
    localrules:
        download_models,

    rule download_models:
        input:
            stage_inputs("download_models"),
        output:
            str(rrl.hub_models.models_cache(CFG) / "manifests" / "{repo}.json"),
        wildcard_constraints:
            repo=rrl.wildcard_regex([rrl.hub_models.repo_key(r) for r in rrl.hub_models.hub_models(CFG)]),
        params:
            config=CONFIG_PATH,
            repo=lambda wildcards: rrl.hub_models.repo_of_key(CFG, wildcards.repo),
            cfg=stage_params("download_models"),
        log:
            "logs/download_models/{repo}.log",
        threads: stage_threads("download_models")
        resources:
            **stage_resources("download_models"),
        conda:
            "../../envs/data.yaml"
        shell:
            "research-rl download-models --config {params.config} --repo {params.repo} > {log} 2>&1"
