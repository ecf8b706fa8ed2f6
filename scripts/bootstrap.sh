#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with latentworks installed.
#   bash scripts/bootstrap.sh          # runtime (generate, train, serve)
#   bash scripts/bootstrap.sh --test   # plus test-only oracles (diffusers), linters and the web test tools
# Re-running is cheap: it installs only what is missing.
# Versions come from constraints.txt (the exact set CI passed with; its header says how to refresh it),
# so a fresh machine gets what CI saw. A changed pyproject.toml or constraints.txt re-installs once.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="server,eval,gguf"
with_test=0
for arg in "$@"; do
  case "$arg" in
    --test) extras="test"; with_test=1 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "bootstrap: unknown option '$arg' (use --test or nothing)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv"
  "$PY" -m venv .venv
fi
stamp=".venv/.latentworks-$extras-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[bootstrap] installing latentworks[$extras] (torch pinned to the CPU wheel)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and alone, so the pinned local CPU wheel is used rather than a CUDA build.
  .venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[$extras]"
  if [ "$with_test" = 1 ]; then
    # A ComfyUI client library the server tests run; it pins Pillow==10.2.0, hence --no-deps (pyproject.toml).
    .venv/bin/python -m pip install -q -c constraints.txt --no-deps "comfyui-api-client==0.1.0"
  fi
  touch "$stamp"
fi
if [ "$with_test" = 1 ] && [ -f scripts/bootstrap_web.sh ]; then
  bash scripts/bootstrap_web.sh
fi
echo "[bootstrap] ready: .venv/bin/latentworks"
