#!/usr/bin/env bash
# Install the locked environment (torch pinned to the CPU build), then lint and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Lint and format check (ruff, configured in pyproject.toml).
ruff check .
ruff format --check .
# Notebooks run top to bottom too (nbmake), with QUICK=1: a reduced organism and small prompt sets.
QUICK=1 python -m pytest -q --nbmake --nbmake-timeout=1800 tests notebooks "$@"
