#!/usr/bin/env bash
# Install the locked environment (torch pinned to the CPU build), then lint, build the docs and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Lint and format check (ruff, configured in pyproject.toml).
ruff check .
ruff format --check .
# The documentation site (mkdocs.yml, docs/) builds with --strict: a broken link or API reference fails CI.
# Not --quiet: it drops warnings before --strict counts them, so a broken link would pass.
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir "$(mktemp -d)"
# Notebooks run top to bottom too (nbmake), with QUICK=1: a reduced organism and small prompt sets.
QUICK=1 python -m pytest -q --nbmake --nbmake-timeout=1800 tests notebooks "$@"
