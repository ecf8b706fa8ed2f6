#!/usr/bin/env bash
# Rebuild the embedded default model from scratch with latentworks' own commands (fifteen stages).
# This is exactly what produced src/latentworks/assets/default (see docs/model_card_default.md).
# On the 2-core CPU it takes about 12 hours; on a GPU pass DEVICE=cuda (and raise the step counts).
#   bash scripts/train_default.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/default}
DEVICE=${DEVICE:-cpu}
VAE_STEPS=${VAE_STEPS:-1800}
UNET_STEPS=${UNET_STEPS:-4387}
VAE_FT_STEPS=${VAE_FT_STEPS:-3297}
UNET_FT_STEPS=${UNET_FT_STEPS:-9000}
UNET_FT2_STEPS=${UNET_FT2_STEPS:-9547}
VAE_FT_TOTAL=${VAE_FT_TOTAL:-9449}
UNET_FT3_STEPS=${UNET_FT3_STEPS:-8000}
VAE_FT_TOTAL2=${VAE_FT_TOTAL2:-12285}
UNET_FT4_STEPS=${UNET_FT4_STEPS:-6276}
UNET_AUG_STEPS=${UNET_AUG_STEPS:-9995}
UNET_AUG2_STEPS=${UNET_AUG2_STEPS:-9948}
VAE_FT3_STEPS=${VAE_FT3_STEPS:-3767}
UNET_AUG3_STEPS=${UNET_AUG3_STEPS:-13942}
VAE_FT3_TOTAL=${VAE_FT3_TOTAL:-8098}
UNET_AUG4_STEPS=${UNET_AUG4_STEPS:-20369}
LW=.venv/bin/latentworks
M=src/latentworks/assets/default
DEFAULTS='{"steps": 20, "guidance": 1.5, "sampler": "euler", "scheduler": "simple"}'
mkdir -p "$W" "$M"
# export_run RUN NAME [FLAG...]: model folder $W/NAME (fp16 weights) from a train run's EMA weights, with
# preview colours fitted on the data; FLAGs go to convert. (convert never overwrites, so each export gets its
# own folder.)
export_run() {
  rm -rf "${W:?}/$2"
  $LW convert --from-run "$1" --out "$W/$2" --name default --data data/emoji-32.npz --half \
    --defaults "$DEFAULTS" --card docs/model_card_default.json "${@:3}"
}
# finetune_decoder RUN STEPS LR [FLAG...]: fine-tune only the decoder of $M in the run $W/RUN (encoder frozen,
# so the U-Net's latents are unchanged) with L1 + perceptual (Inception) + patch-GAN loss, as SD's ft-MSE
# decoders, at AdamW LR; then swap the new decoder into $M. FLAGs (e.g. --resume) go to train-vae last, so
# they can also override the settings here.
finetune_decoder() {
  $LW train-vae --data data/emoji-32.npz --out "$W/$1" --finetune-decoder "$M" \
    --steps "$2" --batch-size 32 --lr "$3" --perceptual-weight 1 --disc-start 0 \
    --checkpoint-every 250 --sample-every 250 --device "$DEVICE" "${@:4}"
  rm -rf "${W:?}/default-$1"
  $LW convert "$M" --decoder-from "$W/$1" --out "$W/default-$1"
  cp "$W/default-$1/vae.safetensors" "$M/vae.safetensors"
}
# continue_unet RUN FROM STEPS LR SEED: continue the U-Net from FROM (a run's fp32 EMA weights, or a model
# folder's fp16 ones) with a fresh AdamW at LR, EMA 0.9995, on stage 4's latent cache, then swap its denoiser
# and model.json (the cache's own latent scale/shift) into $M.
continue_unet() {
  $LW train --out "$W/$1" --latents "$W/unet-ft/latents.safetensors" --vae "$M" --init-from "$2" \
    --architecture unet --prediction flow --steps "$3" --batch-size 64 --lr "$4" --ema-decay 0.9995 \
    --caption-dropout 0.1 --seed "$5" --checkpoint-every 500 --sample-every 3000 --device "$DEVICE"
  export_run "$W/$1" "default-$1"
  cp "$W/default-$1/denoiser.safetensors" "$W/default-$1/model.json" "$M/"
}
# Data: Noto + Twemoji emoji at 32x32 with emojibase captions (fixed held-out split by emoji).
[ -f data/emoji-32.npz ] || $LW data emoji --out data --size 32
# Stage 1: KL autoencoder, f4, 8 latent channels, L1 + KL. (The perceptual and GAN terms are off for
# the CPU budget; see docs/model_card_default.md.)
$LW train-vae --data data/emoji-32.npz --out "$W/vae" --preset emoji32-f4c8 --resolution 32 \
  --steps "$VAE_STEPS" --batch-size 32 --lr 5e-4 --perceptual-weight 0 --disc-start -1 \
  --checkpoint-every 100 --sample-every 300 --device "$DEVICE"
# Stage 2: text-conditioned U-Net on cached latents, rectified flow with logit-normal time, EMA; its export
# becomes the model folder.
$LW train --out "$W/unet" --vae "$W/vae" --data data/emoji-32.npz --architecture unet --preset emoji32-xs-c8 \
  --prediction flow --steps "$UNET_STEPS" --batch-size 64 --lr 5e-4 --ema-decay 0.999 --caption-dropout 0.1 \
  --checkpoint-every 200 --sample-every 1000 --device "$DEVICE"
export_run "$W/unet" default-base
cp "$W/default-base/"* "$M/"
# Stage 3: the decoder fine-tune.
finetune_decoder vae-ft "$VAE_FT_STEPS" 1e-4
# Stage 4: fine-tune the U-Net from the model folder (--init-from: its fp16 EMA weights, a fresh AdamW at
# 2e-4, EMA 0.999 without warm-up) on the same latents (--vae: the model folder's encoder).
$LW train --out "$W/unet-ft" --vae "$M" --data data/emoji-32.npz --init-from "$M" --architecture unet \
  --prediction flow --steps "$UNET_FT_STEPS" --batch-size 64 --lr 2e-4 --ema-decay 0.999 --caption-dropout 0.1 \
  --checkpoint-every 200 --sample-every 1000 --device "$DEVICE"
export_run "$W/unet-ft" default-ft2
cp "$W/default-ft2/denoiser.safetensors" "$M/denoiser.safetensors"
# Stage 5: continue from stage 4's run at half the learning rate with a longer EMA. (Run with --steps 12000
# --max-seconds 5700, which stopped at 9,547.)
continue_unet unet-ft2 "$W/unet-ft" "$UNET_FT2_STEPS" 1e-4 7
# Stage 6: continue stage 3's decoder fine-tune (--resume: its full state, same settings) to VAE_FT_TOTAL
# steps and swap the decoder in again; the encoder is frozen, so stages 4-5 stand. (Run with --steps 10000
# --max-seconds 5000, which stopped at 9,449.)
finetune_decoder vae-ft "$VAE_FT_TOTAL" 1e-4 --resume
# Stage 7: continue stage 5's run at half its learning rate again.
continue_unet unet-ft3 "$W/unet-ft2" "$UNET_FT3_STEPS" 5e-5 11
# Stage 8: continue the decoder fine-tune once more (--resume) to VAE_FT_TOTAL2 steps. (Run with --steps
# 14000 --max-seconds 2400, which stopped at 12,285.)
finetune_decoder vae-ft "$VAE_FT_TOTAL2" 1e-4 --resume
# Stage 9: continue the U-Net from the model folder itself (its fp16 weights: stage 7's fp32 run was not
# kept) at half stage 7's learning rate. (Run with --steps 12000 --max-seconds 3900, which stopped at 6,276,
# on a cache encoded afresh by the model folder's encoder: same latent scale/shift to every printed digit.)
continue_unet unet-ft4 "$M" "$UNET_FT4_STEPS" 2.5e-5 13
# Stage 10: caption augmentation (issue 21). The U-Net continued from the model folder on the same latents
# with --caption-augment on: each example is seen as its label alone, the label with 0-3 shuffled tags, with
# or without the style, in any case, so the forms people type work. (Run with --steps 4000 --max-seconds 3300,
# which stopped at 1,457, shipped; then resumed with --resume to the planned 4,000, shipped again, and with
# --resume --steps 8000 --max-seconds 2400 to 5,732, shipped, and --resume --steps 16000 --max-seconds 5400
# to 9,995, shipped: each chosen over the weights before it by 'latentworks eval model' on user-form prompts.)
$LW train --out "$W/unet-aug" --latents "$W/unet-ft/latents.safetensors" --vae "$M" --init-from "$M" \
  --architecture unet --prediction flow --steps "$UNET_AUG_STEPS" --batch-size 64 --lr 5e-5 --ema-decay 0.999 \
  --caption-dropout 0.1 --caption-augment on --seed 11 --checkpoint-every 250 --sample-every 100000 \
  --device "$DEVICE"
export_run "$W/unet-aug" default-unet-aug
cp "$W/default-unet-aug/denoiser.safetensors" "$M/"
# Stage 11: the same caption-augmented fine-tune, continued from the model folder's fp16 weights with a fresh
# AdamW (stage 10's run was not kept), on latents encoded afresh by its encoder (--data: scale/shift equal to
# stage 10's in the first five digits, written to model.json with the denoiser). (Run with --steps 12000
# --max-seconds 5400, which stopped at 5,502, shipped; then --resume --max-seconds 5100 to 9,948, shipped with
# stage 12's decoder.)
$LW train --out "$W/unet-aug2" --vae "$M" --data data/emoji-32.npz --init-from "$M" \
  --architecture unet --prediction flow --steps "$UNET_AUG2_STEPS" --batch-size 64 --lr 5e-5 --ema-decay 0.999 \
  --caption-dropout 0.1 --caption-augment on --seed 17 --checkpoint-every 250 --sample-every 100000 \
  --device "$DEVICE"
export_run "$W/unet-aug2" default-unet-aug2
cp "$W/default-unet-aug2/denoiser.safetensors" "$W/default-unet-aug2/model.json" "$M/"
# Stage 12: a new decoder fine-tune of the model folder (stage 8's run, with its optimizer and discriminator,
# was not kept): a fresh run at half stage 3's learning rate, same losses, encoder frozen, so stage 11 stands.
# (Run with --steps 20000 --max-seconds 5100, which stopped at 3,767.)
finetune_decoder vae-ft2 "$VAE_FT3_STEPS" 5e-5 --sample-every 100000
# Stage 13: stage 11's run resumed (--resume: its AdamW state and EMA) at 2.5x lower learning rate, 2e-5, to
# anneal it. (Run with --steps 16000 --max-seconds 4900, which stopped at 13,942.)
$LW train --out "$W/unet-aug2" --resume --lr 2e-5 --steps "$UNET_AUG3_STEPS" --device "$DEVICE"
export_run "$W/unet-aug2" default-unet-aug3
cp "$W/default-unet-aug3/denoiser.safetensors" "$M/"
# Stage 14: stage 12's decoder fine-tune resumed with the same settings to VAE_FT3_TOTAL steps and swapped in
# again; the encoder is frozen, so stage 13 stands. (Run with --max-seconds 6000, which stopped at 8,098.)
finetune_decoder vae-ft2 "$VAE_FT3_TOTAL" 5e-5 --sample-every 100000 --resume
# Stage 15: stage 13's run resumed again at the same learning rate, 2e-5 (run with --steps 22000
# --max-seconds 6600, which stopped at 20,369), and exported with the flow sampling shift 2 instead of 1 (a
# sampling-time choice, picked by 'latentworks eval model' among 0.7-6: docs/results.md); model.json carries it.
$LW train --out "$W/unet-aug2" --resume --lr 2e-5 --steps "$UNET_AUG4_STEPS" --device "$DEVICE"
export_run "$W/unet-aug2" default-unet-aug4 --shift 2
cp "$W/default-unet-aug4/denoiser.safetensors" "$W/default-unet-aug4/model.json" "$M/"
