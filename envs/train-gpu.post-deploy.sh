#!/usr/bin/env bash
# Snakemake runs this inside the new conda env, from the workflow's directory (the repository root).
# --no-deps: gpu-requirements.txt already holds every dependency, at the GPU-compatible pins.
set -euo pipefail
pip install --no-deps -e .
pip check || echo "pip check: research-rl's metadata pins fastapi/numpy for the CPU env; the GPU env pins differ on purpose"
