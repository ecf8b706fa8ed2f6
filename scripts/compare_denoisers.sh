#!/usr/bin/env bash
# The default model's architecture/objective comparison (issue #4): equal CPU time per candidate on the
# same cached latents of the shipped autoencoder, then seen-prompt FID/KID at N=300 (euler, 20 steps,
# CFG 4). Candidates: U-Net + rectified flow (what ships), U-Net + v-prediction, DiT + rectified flow
# (both networks ~11M parameters). Results are recorded in docs/results.md.
#   bash scripts/compare_denoisers.sh [WORKDIR] [SECONDS]
# WORKDIR must hold vae/ and unet/latents.safetensors from scripts/train_default.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/default}
SECONDS_EACH=${2:-600}
DEVICE=${DEVICE:-cpu}
LW=.venv/bin/latentworks
mkdir -p "$W/compare"
run() {  # name architecture preset prediction
  local out="$W/compare/$1"
  [ -f "$out/model.safetensors" ] || $LW train --out "$out" --vae "$W/vae" --latents "$W/unet/latents.safetensors" \
    --architecture "$2" --preset "$3" --prediction "$4" --steps 100000 --max-seconds "$SECONDS_EACH" \
    --batch-size 64 --lr 5e-4 --ema-decay 0.999 --caption-dropout 0.1 --checkpoint-every 200 \
    --sample-every 100000 --device "$DEVICE"
  $LW convert --from-run "$out" --out "$out/model" --name "$1" --data data/emoji-32.npz \
    --defaults '{"steps": 20, "guidance": 4.0, "sampler": "euler", "scheduler": "simple"}'
  echo "== $1 ($2, $4): $(tail -1 "$out/log.jsonl")"
  $LW eval model "$out/model" --data data/emoji-32.npz --split train -n 300 --feature-cache runs/featcache 2>/dev/null
}
run unet-flow unet emoji32-xs-c8 flow
run unet-v unet emoji32-xs-c8 v
run dit-flow dit emoji32-dit-xs-c8 flow
