"""Training throughput of our U-Net against diffusers' UNet2DConditionModel (not a test).

Both models are built at the same configuration with identical weights (copied through our key
map), then timed on the same batch: forward + MSE loss + backward + SGD step, median of several
steps after a warm-up, in the same process. Prints images/s for both and the ratio ours/diffusers
(goal: at least 1.0). Default: the full ``sd15`` configuration at a small spatial size so it runs on
a 2-core CPU; ``--preset emoji32-xs`` times the default model's network.

    .venv/bin/python benchmarks/train_step.py [--preset sd15] [--latent 16] [--batch 2] [--steps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from latentworks.diffusion.conditioning import Conditioning
from latentworks.models.unet import PRESETS, UNet


def diffusers_unet(cfg):  # noqa: ANN001, ANN201
    from diffusers import UNet2DConditionModel

    n = len(cfg.channels)
    heads = [cfg.heads_at(i)[0] for i in range(n)]
    depth = list(cfg.transformer_depth)
    down = ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depth]
    up = ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depth)]
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        block_out_channels=tuple(cfg.channels),
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.context_dim,
        attention_head_dim=heads,
        transformer_layers_per_block=[max(1, d) for d in depth],
        use_linear_projection=cfg.use_linear_projection,
        norm_num_groups=cfg.norm_groups,
    )


def time_steps(step, n: int) -> float:  # noqa: ANN001
    step()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="sd15")
    ap.add_argument("--latent", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    cfg = PRESETS[args.preset]
    if cfg.pooled_dim:
        raise SystemExit("added-conditioning presets (sdxl) are not wired into this benchmark")
    torch.manual_seed(0)
    ref = diffusers_unet(cfg)
    ours = UNet(cfg)
    ours.load_state_dict({k: v for k, v in _from_diffusers(ref.state_dict(), cfg).items()}, strict=True)
    b, s = args.batch, args.latent
    x = torch.randn(b, cfg.in_channels, s, s)
    t = torch.randint(0, 1000, (b,)).float()
    ctx = torch.randn(b, 77, cfg.context_dim)
    target = torch.randn(b, cfg.out_channels, s, s)

    def make_step(model, fwd):  # noqa: ANN001, ANN202
        opt = torch.optim.SGD(model.parameters(), lr=1e-5)  # stateless: keeps sd15 x2 within 24 GB

        def step() -> None:
            loss = torch.nn.functional.mse_loss(fwd(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    ours_s = time_steps(make_step(ours, lambda: ours(x, t, Conditioning(tokens=ctx))), args.steps)
    ours.zero_grad(set_to_none=True)
    ref_s = time_steps(make_step(ref, lambda: ref(x, t, encoder_hidden_states=ctx).sample), args.steps)
    print("| config | batch | latent | ours img/s | diffusers img/s | ratio ours/diffusers |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.preset} | {b} | {s}x{s} | {b / ours_s:.3f} | {b / ref_s:.3f} | {ref_s / ours_s:.2f} |")
    print(f"\nthreads {torch.get_num_threads()}, torch {torch.__version__}")


def _from_diffusers(sd: dict, cfg) -> dict:  # noqa: ANN001
    from latentworks.checkpoints.keymaps.sd_diffusers import unet_from_diffusers

    return unet_from_diffusers(sd, cfg)


if __name__ == "__main__":
    main()
