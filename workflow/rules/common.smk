# Helpers the rules share: input, params and resource functions over the shared plan.


def stage_inputs(rule_name):
    """Data deps and the stage's source files (an edit reruns it through the mtime trigger)."""
    return lambda wildcards: rrl.inputs(CFG, rule_name, wildcards)


def stage_params(rule_name):
    """The values of the config keys the stage reads (Snakemake's params rerun trigger)."""
    return lambda wildcards: rrl.params(CFG, rule_name, wildcards)


def stage_resource(rule_name, key, default):
    """One resource from cfg["resources"] (per model size for train/evaluate, else the default)."""
    return lambda wildcards: rrl.resources(CFG, rule_name, wildcards).get(key, default)


def stage_threads(rule_name):
    return lambda wildcards: rrl.resources(CFG, rule_name, wildcards).get("cpus", 1)


def stage_resources(rule_name):
    """Slurm-plugin resources from cfg["resources"]: gpu (--gpus), cpus_per_task, mem_mb, runtime
    (minutes). slurm_partition, slurm_extra and nodes only where the config sets them, so the
    profile's default-resources (partition, account) apply otherwise."""
    resources = {
        "gpu": stage_resource(rule_name, "gpus", 0),
        "cpus_per_task": stage_resource(rule_name, "cpus", 1),
        "mem_mb": stage_resource(rule_name, "mem_mb", 1000),
        "runtime": stage_resource(rule_name, "runtime", 60),
    }
    optional = {"slurm_partition": "slurm_partition", "slurm_extra": "slurm_extra", "nodes": "nodes"}
    for resource, key in optional.items():
        stages = [stage for stage in rrl.cached_plan(CFG) if stage.rule == rule_name]
        if any(key in stage.resources for stage in stages):
            resources[resource] = stage_resource(rule_name, key, "" if key != "nodes" else 1)
    return resources
