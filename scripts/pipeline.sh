#!/usr/bin/env bash
# The DAG through Snakemake, then what it built recorded in DVC, so that `dvc status` is up to date and
# `dvc push` works at once. Extra arguments go to snakemake; after a dry run nothing is recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PATH="$PWD/.venv/bin:$PATH"
snakemake --profile profiles/local "$@"

for arg in "$@"; do
  case "$arg" in
    -n | --dry-run | --dryrun | -S | --summary | --detailed-summary | --list* | --dag | --rulegraph) exit 0 ;;
  esac
done
# The embedded default's outputs differ across machines (results/README.md), so its DVC record stays in this
# clone: DVC runs without git here (core.no_scm in .dvc/config.local, which git ignores) and dvc.lock is
# excluded in .git/info/exclude, not in .gitignore. To version a run in git instead: `rm .dvc/config.local`,
# delete that exclude line, then `dvc commit` and `git add dvc.lock`.
if git rev-parse --git-dir >/dev/null 2>&1; then
  dvc config --local core.no_scm true
  exclude="$(git rev-parse --git-path info/exclude)"
  mkdir -p "$(dirname "$exclude")"
  grep -qx '/dvc.lock' "$exclude" 2>/dev/null || echo '/dvc.lock' >> "$exclude"
fi
# Snakemake built the stages of dvc.yaml (the same plan); `dvc commit` hashes their outputs into dvc.lock
# and the DVC cache without running anything again.
if ! dvc commit --force --quiet; then
  echo "dvc commit failed: DVC records a run only once every stage of dvc.yaml has its outputs" >&2
  exit 1
fi
dvc status
