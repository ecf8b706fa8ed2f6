"""Our MM-DiT against diffusers' SD3Transformer2DModel at full SD3 width, on identical random weights.

The diffusers model is built from an inline config (no hub), its weights go through our key map into a
strict load, and both run the same float32 inputs. Depth is reduced (the last block is the special
"context pre-only" block either way); width, heads, patching, position grid, text and pooled widths are the
real ones.
"""

from __future__ import annotations

import gc

import pytest
import torch

from latentworks.checkpoints.keymaps.sd3_diffusers import sd3_from_diffusers
from latentworks.diffusion.conditioning import Conditioning
from latentworks.models.mmdit import PRESETS, MMDiT

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.slow
TOLERANCE = 1e-4


def _diffusers_config(preset: str, depth: int) -> dict:
    cfg = PRESETS[preset]
    return {
        "sample_size": cfg.sample_size,
        "patch_size": cfg.patch_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.output_channels,
        "num_layers": depth,
        "attention_head_dim": cfg.head_dim,
        "num_attention_heads": cfg.num_heads,
        "joint_attention_dim": cfg.context_dim,
        "caption_projection_dim": cfg.width,
        "pooled_projection_dim": cfg.pooled_dim,
        "pos_embed_max_size": cfg.pos_embed_max_size,
        "qk_norm": cfg.qk_norm,
        "dual_attention_layers": tuple(i for i in cfg.dual_attention_layers if i < depth),
    }


def _randomise(ref: torch.nn.Module) -> None:
    """Default inits leave norm weights at 1 and attention nearly uniform; make both informative."""
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name and p.ndim == 1 and "linear" not in name:
                p.normal_(1.0, 0.3)
            elif name.endswith(("to_q.weight", "to_k.weight", "add_q_proj.weight", "add_k_proj.weight")):
                p.mul_(3.0)


@pytest.mark.parametrize(
    ("preset", "depth", "batch", "size"),
    [
        ("sd3-medium", 2, 2, 32),  # SD3 Medium width 1536 / 24 heads
        ("sd3.5-large", 2, 1, 16),  # qk RMS-norm, width 2432 / 38 heads
        ("sd3.5-medium", 2, 1, 16),  # qk RMS-norm + dual attention (MMDiT-X) in every block here
    ],
)
def test_mmdit_matches_diffusers_sd3(preset: str, depth: int, batch: int, size: int) -> None:
    torch.manual_seed(0)
    ref = diffusers.SD3Transformer2DModel(**_diffusers_config(preset, depth)).eval()
    _randomise(ref)
    from dataclasses import replace

    config = replace(
        PRESETS[preset],
        depth=depth,
        dual_attention_layers=tuple(i for i in PRESETS[preset].dual_attention_layers if i < depth),
    )
    with torch.device("meta"):
        ours = MMDiT(config)
    ours.load_state_dict(sd3_from_diffusers(ref.state_dict(), config), strict=True, assign=True)
    ours.eval()

    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 16, size, size, generator=g)
    t = torch.tensor([1000.0, 37.5][:batch])
    tokens = torch.randn(batch, 77, 4096, generator=g)
    pooled = torch.randn(batch, 2048, generator=g)
    with torch.no_grad():
        expected = ref(
            hidden_states=x, encoder_hidden_states=tokens, pooled_projections=pooled, timestep=t
        ).sample
        got = ours(x, t, Conditioning(tokens=tokens, pooled=pooled))
    err = ((got - expected).norm() / expected.norm()).item()
    print(f"{preset} depth={depth} relative error {err:.2e}")
    assert got.shape == expected.shape == x.shape
    assert expected.std() > 0.1  # a real signal, not a zero-initialised output
    assert err <= TOLERANCE
    del ref, ours
    gc.collect()
