#!/usr/bin/env bash
# Install the exact environment the README's numbers came from (requirements.lock: every package's version
# and hashes, made by scripts/lock.sh from pyproject.toml's ranges), then this package on top of it.
# torch is the 2.13.0 CPU build (2.13.0+cpu): where pip cannot find it (it lies on this project's machines'
# disk), set TORCH_INDEX to PyTorch's CPU wheel index.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=()
if [ -n "${TORCH_INDEX:-}" ]; then extra=(--extra-index-url "$TORCH_INDEX"); fi
python -m pip install --quiet --disable-pip-version-check "${extra[@]}" --require-hashes -r requirements.lock
python -m pip install --quiet --disable-pip-version-check --no-deps -e .
