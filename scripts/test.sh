#!/usr/bin/env bash
# Install the locked environment (torch pinned to the CPU build), then lint and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# The exact environment the README's numbers came from (requirements.lock: versions and hashes, made by
# scripts/lock.sh from pyproject.toml's ranges), then this package itself on top of it.
python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
python -m pip install --quiet --disable-pip-version-check --no-deps -e .
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Lint and format check (ruff, configured in pyproject.toml).
ruff check .
ruff format --check .
# Notebooks run top to bottom too (nbmake), with QUICK=1: a reduced organism and small prompt sets.
QUICK=1 python -m pytest -q --nbmake --nbmake-timeout=1800 tests notebooks "$@"
