#!/usr/bin/env bash
# Install everything this repository needs (torch pinned to the CPU build), then run the study on the
# embedded default pair. Extra arguments go to `interp run` (e.g. --out runs/mine).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec interp run "$@"
