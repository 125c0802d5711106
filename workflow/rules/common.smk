# Helpers the rules share: input, params and resource functions over the shared plan.
from research_rl import cluster as rrl_cluster
from snakemake.exceptions import WorkflowError


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
    """Slurm-plugin resources from cfg["resources"] through research_rl.cluster.slurm_resources: gpus, cpus
    and mem_mb per node; one node: gpu (--gpus) and nodes=1; several: --nodes=N --ntasks-per-node=1
    --gpus-per-node=G and no `srun -n1` around the job (the plugin's mpi path). Every key is present for
    every job; a None value is dropped by Snakemake, so the profile's default-resources (partition,
    account) apply where the config sets none."""
    keys = rrl_cluster.slurm_resources(rrl.resources_for(CFG)).keys()
    return {
        key: (lambda wildcards, key=key: rrl_cluster.slurm_resources(rrl.resources(CFG, rule_name, wildcards))[key])
        for key in keys
    }


# A plan that cannot run on its GPUs fails here, at parse time (so `snakemake -n` shows it), before any job
# is submitted: per-GPU memory (research-rl plan-memory) and Slurm nodes against grpo num_nodes. The embedded
# default has no GPUs to plan for, and its parse stays fast (the check imports torch through the trainer).
if "toyworld" not in CFG:
    from research_rl.training import memory as rrl_memory

    _plan_problems = rrl_memory.check_memory(CFG) + rrl_cluster.check_nodes(CFG)
    if _plan_problems:
        raise WorkflowError(
            f"{CONFIG_PATH} does not fit its GPUs (see `research-rl plan-memory --config {CONFIG_PATH}`):\n"
            + "\n".join(_plan_problems)
        )
