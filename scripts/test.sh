#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up (with test oracles), lint, type check, tests.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k sampler # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --test
echo "[test] ruff"
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
echo "[test] mypy"
.venv/bin/mypy
echo "[test] pytest"
# Keep oversubscription away on small CI machines; tests set their own seeds.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout=1800 "$@"
