"""Per-family generation behaviour: SDXL size ids, FLUX distilled guidance and dynamic shift."""

from __future__ import annotations

import pytest
import torch

from latentworks import families
from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.denoisers import FlowModelSampling
from latentworks.pipelines.families import (
    add_conditioning_extras,
    behaviour_of,
    cfg_scale,
    sampling_for_size,
)


def _cond(b: int = 2) -> Conditioning:
    return Conditioning(tokens=torch.zeros(b, 3, 4), pooled=torch.zeros(b, 5))


def test_sdxl_time_ids_follow_diffusers_order_height_first() -> None:
    c = add_conditioning_extras(behaviour_of("sdxl"), _cond(), height=768, width=1344, guidance=5.0)
    expected = torch.tensor([[768.0, 1344.0, 0.0, 0.0, 768.0, 1344.0]] * 2)
    torch.testing.assert_close(c.extra["time_ids"], expected)
    assert "guidance" not in c.extra


def test_refiner_uses_aesthetic_scores_for_prompt_and_negative() -> None:
    b = behaviour_of("sdxl-refiner")
    pos = add_conditioning_extras(b, _cond(1), height=1024, width=1024, guidance=5.0)
    neg = add_conditioning_extras(b, _cond(1), height=1024, width=1024, guidance=5.0, negative=True)
    assert pos.extra["time_ids"].tolist() == [[1024.0, 1024.0, 0.0, 0.0, 6.0]]
    assert neg.extra["time_ids"].tolist() == [[1024.0, 1024.0, 0.0, 0.0, 2.5]]


def test_flux_dev_puts_guidance_in_cond_and_turns_cfg_off() -> None:
    b = behaviour_of("flux-dev")
    c = add_conditioning_extras(b, _cond(3), height=512, width=512, guidance=3.5)
    torch.testing.assert_close(c.extra["guidance"], torch.full((3,), 3.5))
    assert cfg_scale(b, 3.5) == 1.0
    assert cfg_scale(behaviour_of("sd1"), 7.0) == 7.0
    assert (
        "guidance"
        not in add_conditioning_extras(
            behaviour_of("flux-schnell"), _cond(), height=512, width=512, guidance=1.0
        ).extra
    )


# FLUX's published dynamic shift: mu = 0.5 + (1.15 - 0.5) * (seq_len - 256) / (4096 - 256) with
# seq_len = (H / 16) * (W / 16) image tokens, and sigma -> e^mu / (e^mu + (1 / sigma - 1)); at sigma = 1/2
# that is e^mu / (e^mu + 1). The numbers are worked by hand:
#   512 x 512:  seq_len 32 * 32 = 1024, mu = 0.5 + 0.65 * 768 / 3840 = 0.63,      e^mu = 1.877611
#   1024 x 768: seq_len 64 * 48 = 3072, mu = 0.5 + 0.65 * 2816 / 3840 = 0.976667, e^mu = 2.655590
@pytest.mark.parametrize(
    ("h", "w", "mu", "half"),
    [(512, 512, 0.63, 1.877611 / 2.877611), (1024, 768, 0.5 + 1830.4 / 3840, 2.655590 / 3.655590)],
)
def test_flux_shift_depends_on_token_count(h: int, w: int, mu: float, half: float) -> None:
    dev = families.get("flux-dev").sampling.to_dict()  # the family's spec carries FLUX.1's dynamic shift
    ms = sampling_for_size(FlowModelSampling(), dev, latent_height=h // 8, latent_width=w // 8)
    assert ms.mu == pytest.approx(mu, abs=1e-12)
    assert float(ms.time_shift(torch.tensor(0.5, dtype=torch.float64))) == pytest.approx(half, abs=1e-6)
    sd3 = FlowModelSampling(shift=3.0)
    sd3_spec = families.get("sd3").sampling.to_dict()
    assert sampling_for_size(sd3, sd3_spec, latent_height=h // 8, latent_width=w // 8) is sd3
    schnell = FlowModelSampling()
    schnell_spec = families.get("flux-schnell").sampling.to_dict()
    assert sampling_for_size(schnell, schnell_spec, latent_height=64, latent_width=64) is schnell


def test_unknown_family_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="sdxl"):
        behaviour_of("sd9")
    assert behaviour_of(None) is families.get("latentworks").generation


def test_dynamic_shift_uses_the_model_spec_constants() -> None:
    """A model whose scheduler config carries its own dynamic-shift constants (Qwen-Image: 256 -> 8192 tokens,
    0.5 -> 0.9) is shifted by those, not FLUX.1's: 1024 px, 8x VAE, 2x2 patches = 4096 tokens, so
    mu = 0.5 + 0.4 * (4096 - 256) / (8192 - 256) = 0.693548..."""
    spec = {"base_seq_len": 256, "max_seq_len": 8192, "base_shift": 0.5, "max_shift": 0.9}
    ms = sampling_for_size(
        FlowModelSampling(), {"kind": "flow", "dynamic_shift": spec}, latent_height=128, latent_width=128
    )
    assert ms.mu == pytest.approx(0.5 + 0.4 * 3840 / 7936, rel=1e-12)
    dev = families.get("flux-dev").sampling.to_dict()
    flux = sampling_for_size(FlowModelSampling(), dev, latent_height=128, latent_width=128)
    assert flux.mu == pytest.approx(0.5 + 0.65 * 3840 / 3840, rel=1e-12)  # FLUX.1: 256 -> 4096, 0.5 -> 1.15
