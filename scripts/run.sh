#!/usr/bin/env bash
# Install the locked environment (torch pinned to the CPU build), then run the study on the
# embedded default pair. Extra arguments go to `interp run` (e.g. --out runs/mine).
set -euo pipefail
cd "$(dirname "$0")/.."
# The exact environment the README's numbers came from (requirements.lock: versions and hashes, made by
# scripts/lock.sh from pyproject.toml's ranges), then this package itself on top of it.
python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
python -m pip install --quiet --disable-pip-version-check --no-deps -e .
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec interp run "$@"
