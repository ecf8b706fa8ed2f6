"""ControlNet overhead per denoising step, ours against diffusers, in one process (not a test).

Both sides get the SD 1.5 configuration with identical random weights: diffusers' ``ControlNetModel`` and
``UNet2DConditionModel`` from inline configs (no hub); ours built on the meta device with diffusers' tensors
assigned through our key maps (shared storage). One "step" is what a sampler pays per call with CFG
(batch 2): the U-Net alone, and the ControlNet plus the U-Net taking its residuals. The overhead is
(with - without); the ratio column is ours / diffusers (goal <= 1.0). The sides alternate in every round
(ours, theirs, then theirs, ours) so a machine shared with other jobs slows both alike; medians of --runs.

    .venv/bin/python benchmarks/controlnet_overhead.py                 # CPU, 32x32 latent (256 px), fp32
    .venv/bin/python benchmarks/controlnet_overhead.py --latent 64 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from latentworks.checkpoints.keymaps.controlnet import (
    controlnet_config_from_diffusers,
    controlnet_from_diffusers,
)
from latentworks.checkpoints.keymaps.sd_diffusers import unet_from_diffusers
from latentworks.diffusion.conditioning import Conditioning
from latentworks.models.controlnet import ControlNet
from latentworks.models.unet import UNet

SD15 = dict(
    block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
)
UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]


def timed(fn: Callable[[], object], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    import diffusers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latent", type=int, default=32, help="latent side (pixels / 8) (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=3, help="timed rounds per side (default: %(default)s)")
    ap.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    args = ap.parse_args()
    dev = args.device

    torch.manual_seed(0)
    ref_cn = diffusers.ControlNetModel(**SD15).eval().to(dev)
    ref_unet = diffusers.UNet2DConditionModel(**SD15, up_block_types=UP).eval().to(dev)
    config = controlnet_config_from_diffusers(
        {k: tuple(v.shape) for k, v in ref_cn.state_dict().items()}, "sd15"
    )
    with torch.device("meta"):
        cn, unet = ControlNet(config), UNet(config.unet)
    cn.load_state_dict(controlnet_from_diffusers(ref_cn.state_dict(), config), assign=True)
    unet.load_state_dict(unet_from_diffusers(ref_unet.state_dict(), config.unet), assign=True)
    cn.eval(), unet.eval()

    g = torch.Generator().manual_seed(1)
    s = args.latent
    x = torch.randn(2, 4, s, s, generator=g).to(dev)
    t = torch.tensor([500.0, 500.0], device=dev)
    ctx = torch.randn(2, 77, 768, generator=g).to(dev)
    hint = torch.rand(2, 3, 8 * s, 8 * s, generator=g).to(dev)
    cond = Conditioning(tokens=ctx)

    def ours_plain() -> object:
        return unet(x, t, cond)

    def ours_cn() -> object:
        return unet(x, t, cond, control=cn(x, t, cond, hint))

    def theirs_plain() -> object:
        return ref_unet(x, t, encoder_hidden_states=ctx).sample

    def theirs_cn() -> object:
        down, mid = ref_cn(x, t, encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False)
        return ref_unet(
            x,
            t,
            encoder_hidden_states=ctx,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample

    fns = {"ours": (ours_plain, ours_cn), "diffusers": (theirs_plain, theirs_cn)}
    times: dict[str, list[float]] = {f"{k}/{m}": [] for k in fns for m in ("plain", "cn")}
    with torch.no_grad():
        for f in (ours_plain, ours_cn, theirs_plain, theirs_cn):  # warm-up
            f()
        for r in range(args.runs):
            order = ["ours", "diffusers"] if r % 2 == 0 else ["diffusers", "ours"]
            for side in order:
                plain, with_cn = fns[side]
                times[f"{side}/plain"].append(timed(plain, dev))
                times[f"{side}/cn"].append(timed(with_cn, dev))
    med = {k: statistics.median(v) for k, v in times.items()}
    over = {side: med[f"{side}/cn"] - med[f"{side}/plain"] for side in fns}
    print(f"SD1.5 U-Net + ControlNet, batch 2, latent {s}x{s}, {dev}, fp32, median of {args.runs}")
    print(f"{'':10s} {'U-Net':>10s} {'+ControlNet':>12s} {'overhead':>10s}")
    for side in fns:
        print(f"{side:10s} {med[f'{side}/plain']:9.3f}s {med[f'{side}/cn']:11.3f}s {over[side]:9.3f}s")
    print(f"overhead ratio ours / diffusers: {over['ours'] / over['diffusers']:.2f}")


if __name__ == "__main__":
    main()
