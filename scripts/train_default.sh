#!/usr/bin/env bash
# Rebuild the embedded default model from scratch with latentworks' own commands (two stages).
# This is exactly what produced src/latentworks/assets/default (see docs/model_card_default.md).
# On the 2-core CPU it takes about 2.5 hours; on a GPU pass DEVICE=cuda (and raise the step counts).
#   bash scripts/train_default.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/default}
DEVICE=${DEVICE:-cpu}
VAE_STEPS=${VAE_STEPS:-1800}
UNET_STEPS=${UNET_STEPS:-4387}
LW=.venv/bin/latentworks
mkdir -p "$W"
# Data: Noto + Twemoji emoji at 32x32 with emojibase captions (fixed held-out split by emoji).
[ -f data/emoji-32.npz ] || $LW data emoji --out data --size 32
# Stage 1: KL autoencoder, f4, 8 latent channels, L1 + KL. (The perceptual and GAN terms are off for
# the CPU budget; see docs/model_card_default.md.)
$LW train-vae --data data/emoji-32.npz --out "$W/vae" --preset emoji32-f4c8 --resolution 32 \
  --steps "$VAE_STEPS" --batch-size 32 --lr 5e-4 --perceptual-weight 0 --disc-start -1 \
  --checkpoint-every 100 --sample-every 300 --device "$DEVICE"
# Stage 2: text-conditioned U-Net on cached latents, rectified flow with logit-normal time, EMA.
$LW train --out "$W/unet" --vae "$W/vae" --data data/emoji-32.npz --family unet --preset emoji32-xs-c8 \
  --prediction flow --steps "$UNET_STEPS" --batch-size 64 --lr 5e-4 --ema-decay 0.999 --caption-dropout 0.1 \
  --checkpoint-every 200 --sample-every 1000 --device "$DEVICE"
# Model folder (fp16 weights), with preview colours fitted on the data.
$LW convert --from-run "$W/unet" --out src/latentworks/assets/default --name default --data data/emoji-32.npz \
  --half --defaults '{"steps": 20, "guidance": 3.0, "sampler": "euler", "scheduler": "simple"}' \
  --card docs/model_card_default.json
