#!/usr/bin/env bash
# Command 2: set up, then lint and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The vLLM environment (.venv-vllm) that tests/test_vllm.py runs vLLM in; idempotent like setup.sh.
bash scripts/setup_vllm.sh
# ...so tests/test_vllm.py fails, never skips, when it is missing.
export RESEARCH_RL_REQUIRE_VLLM=1
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PATH="$PWD/.venv/bin:$PATH"
ruff check src tests benchmarks
exec python -m pytest -q -p no:cacheprovider "$@"
