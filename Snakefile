# research-rl: the DAG of DESIGN.md section 1 for Snakemake.
#
# Every rule is a thin shell call of the package CLI (`research-rl <stage> --config FILE`). Inputs,
# params and resources come from research_rl.workflow.plan, the same plan `research-rl dvc-yaml`
# writes dvc.yaml from, and every path from research_rl.paths.
#
#   snakemake --profile profiles/local                                   # the embedded default
#   snakemake --profile profiles/slurm --configfile config/paper.yaml    # the paper, on Slurm
import os

from snakemake.utils import min_version, validate

from research_rl import paths
from research_rl import workflow as rrl
from research_rl.config import load_config

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schemas/config.schema.yaml")

# Snakemake deep-merges a --configfile into config/config.yaml; the pipeline instead reads exactly
# the one file given (a paper run must not inherit the toy world), through the package's loader.
CONFIG_PATH = (
    os.path.relpath(workflow.overwrite_configfiles[-1])
    if workflow.overwrite_configfiles
    else "config/config.yaml"
)
CFG = load_config(CONFIG_PATH)
WILDCARDS = rrl.wildcard_values(CFG)


wildcard_constraints:
    model=rrl.wildcard_regex(WILDCARDS["model"]),
    benchmark=rrl.wildcard_regex(WILDCARDS["benchmark"]),
    method=rrl.wildcard_regex(WILDCARDS["method"]),
    shard=r"\d{5}",


localrules:
    all,


rule all:
    input:
        rrl.final_targets(CFG),
    default_target: True


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/retrieval.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/service.smk"
