#!/usr/bin/env bash
# Command 1: set up, then run the whole DAG on the embedded default (CPU, no network but package registries)
# and record it in DVC (scripts/pipeline.sh). Extra arguments go to snakemake, e.g. `bash scripts/run.sh -n`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec bash scripts/pipeline.sh "$@"
