#!/usr/bin/env bash
# Install the locked environment (torch pinned to the CPU build), then run the study on the
# embedded default pair. Extra arguments go to `interp run` (e.g. --out runs/mine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec interp run "$@"
