#!/usr/bin/env bash
# Regenerate requirements.lock: the exact versions (with their hashes) that scripts/run.sh and
# scripts/test.sh install, resolved from pyproject.toml's ranges with the dev extra, for CPython 3.11 on
# x86_64 Linux. torch is the 2.13.0 CPU build (found with --find-links; set TORCH_WHEELS to its folder).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null || python -m pip install --quiet uv
uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --find-links "${TORCH_WHEELS:-/opt/wheels}" \
    --no-header --output-file requirements.lock
