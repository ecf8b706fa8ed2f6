#!/usr/bin/env bash
# The GPU half of the Z-Image / Qwen-Image benchmarks in one device call (no internet needed): bf16 and fp8
# step time against diffusers at the released widths with reduced depth, and memory-budget streaming
# throughput. Results go to $OUT (results.json, results.md, log.txt). See benchmarks/gpu_check.py.
#
#   OUT=/tmp/gpu-check benchmarks/gpu_check.sh            # on an H100/H200: about 3-5 minutes
#   OUT=/tmp/gpu-check benchmarks/gpu_check.sh --cpu --tiny   # the CPU path, to test the script
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
{
  echo "# $(date -u '+%Y-%m-%d %H:%M UTC') $(uname -n)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" -c 'import torch, diffusers; print("torch", torch.__version__, "cuda", torch.version.cuda, "diffusers", diffusers.__version__)'
} > "$OUT/log.txt" 2>&1
# 470 s leaves room inside an 8-minute call for start-up and copying the results back.
timeout 470 "$PY" benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee -a "$OUT/log.txt"
