#!/usr/bin/env bash
# Idempotent set-up on a machine with only Python 3.11 and pip: a venv in .venv with the pinned package.
# Reinstalls only when pyproject.toml changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || { echo "research-rl needs Python 3.11 (found $("$PYTHON" --version 2>&1))" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.research-rl-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  # DS_BUILD_OPS=0: deepspeed (an sdist) builds no CUDA ops at install; they compile on first use on GPUs.
  DS_BUILD_OPS=0 .venv/bin/python -m pip install --quiet -e '.[test]'
  echo "$want" > "$stamp"
fi
