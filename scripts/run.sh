#!/usr/bin/env bash
# Command 1: set up, then run the whole DAG on the embedded default (CPU, no network but package registries).
# Extra arguments go to snakemake, e.g. `bash scripts/run.sh -n` for a dry run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PATH="$PWD/.venv/bin:$PATH"
exec snakemake --profile profiles/local "$@"
