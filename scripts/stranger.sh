#!/usr/bin/env bash
# A stranger's first run, as CI checks it: this repository's committed HEAD cloned into an empty temporary
# folder (nothing beside it: no ../shared), a new virtual environment, an empty $INTERP_CACHE, then the
# README's first command at its smallest size (`--smoke`: the reduced organism). Extra arguments go to
# `interp run`. Everything it made is removed at the end; it exits non-zero if any step fails.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/alone"
git clone --quiet "$repo" "$work/alone/interp"
python -m venv "$work/venv"
# shellcheck disable=SC1091
source "$work/venv/bin/activate"
cd "$work/alone/interp"
export INTERP_CACHE="$work/cache"
start=$SECONDS
bash scripts/run.sh --smoke --out runs/smoke "$@"
test -s runs/smoke/report.md && test -s runs/smoke/layer_map.json
echo "stranger's path: a clone with nothing beside it ran \`bash scripts/run.sh --smoke\` in $((SECONDS - start)) s (install included; load average $(cut -d' ' -f1-3 /proc/loadavg))"
