"""The sampling pieces Qwen-Image adds: the true-CFG norm rescale (diffusers' QwenImagePipeline, on packed
velocity tokens), ComfyUI's CFGNorm (on x0), the terminal stretch of its scheduler, per-channel latent
statistics, and the scheduler config carrying ``shift_terminal``."""

from __future__ import annotations

import pytest
import torch

from latentworks.checkpoints.keymaps.diffusers_configs import scheduler_from_diffusers, scheduler_to_diffusers
from latentworks.diffusion.guidance import QWEN_IMAGE_TRUE_CFG, CFGDenoiser, GuidanceNorm, GuidedCond
from latentworks.diffusion.latent_formats import LatentFormat
from latentworks.diffusion.schedules import stretch_to_terminal
from latentworks.nn.patch import pack_latents

diffusers = pytest.importorskip("diffusers")


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_velocity_norm_is_diffusers_rule_on_packed_tokens() -> None:
    x, x0_c, x0_u = (_randn(2, 16, 4, 6, seed=i) for i in range(3))
    sigma = torch.tensor([0.7, 0.3], dtype=torch.float64)
    scale = 4.0
    x0_cfg = x0_u + scale * (x0_c - x0_u)
    got = QWEN_IMAGE_TRUE_CFG(x, sigma, x0_cfg, x0_c)
    # diffusers, written out on its packed velocities (B, L, 64)
    s = sigma[:, None, None, None]
    v_c, v_u = pack_latents((x - x0_c) / s), pack_latents((x - x0_u) / s)
    comb = v_u + scale * (v_c - v_u)
    v = comb * (torch.norm(v_c, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
    expected = x - s * _unpack(v, 4, 6)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert (got - x0_cfg).abs().max() > 1e-3  # it does something


def _unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    from latentworks.nn.patch import unpack_latents

    return unpack_latents(tokens, h, w)


def test_x0_norm_is_comfyui_cfgnorm() -> None:
    x, x0_c, x0_g = (_randn(1, 4, 3, 3, seed=i) for i in range(3))
    norm = GuidanceNorm(space="x0", clamp=True, strength=0.8)
    got = norm(x, torch.tensor([0.5], dtype=torch.float64), x0_g, x0_c)
    factor = (torch.norm(x0_c, dim=1, keepdim=True) / (torch.norm(x0_g, dim=1, keepdim=True) + 1e-8)).clamp(
        0, 1
    )
    torch.testing.assert_close(got, x0_g * factor * 0.8, rtol=0, atol=1e-12)


def test_cfg_denoiser_applies_the_norm_to_the_guided_prediction() -> None:
    x = _randn(1, 16, 2, 2, seed=0)

    def denoiser(xx: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return xx * 0.5 + cond  # cond is a (B, 16, 2, 2) offset here

    c, u = _randn(1, 16, 2, 2, seed=1), _randn(1, 16, 2, 2, seed=2)
    sigma = torch.tensor([0.6], dtype=torch.float64)
    plain = CFGDenoiser(denoiser, 3.0)(x, sigma, GuidedCond(c, u))  # type: ignore[arg-type]
    normed = CFGDenoiser(denoiser, 3.0, norm=QWEN_IMAGE_TRUE_CFG)(x, sigma, GuidedCond(c, u))  # type: ignore[arg-type]
    torch.testing.assert_close(normed, QWEN_IMAGE_TRUE_CFG(x, sigma, plain, x * 0.5 + c), rtol=0, atol=1e-12)


def test_stretch_to_terminal_equals_diffusers_scheduler() -> None:
    sched = diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, time_shift_type="exponential", shift_terminal=0.02
    )
    import numpy as np

    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 5, 5), mu=0.7)
    unstretched = diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, time_shift_type="exponential"
    )
    unstretched.set_timesteps(sigmas=np.linspace(1.0, 1 / 5, 5), mu=0.7)
    got = stretch_to_terminal(unstretched.sigmas.double(), 0.02)
    torch.testing.assert_close(got, sched.sigmas.double(), rtol=0, atol=1e-6)
    assert float(got[-2]) == pytest.approx(0.02) and float(got[0]) == pytest.approx(1.0)


def test_per_channel_latent_format_round_trips_and_normalises() -> None:
    mean, std = tuple(float(i) for i in range(4)), tuple(1.0 + i for i in range(4))
    lf = LatentFormat(channels=4, scale_factor=1.0, channel_mean=mean, channel_std=std)
    z = _randn(2, 4, 3, 3, seed=0)
    inn = lf.process_in(z)
    torch.testing.assert_close(inn[:, 2], (z[:, 2] - 2.0) / 3.0)
    torch.testing.assert_close(lf.process_out(inn), z)
    with pytest.raises(ValueError, match="4 entries"):
        LatentFormat(channels=4, scale_factor=1.0, channel_mean=(0.0,), channel_std=(1.0,))


def test_qwen_image_scheduler_config_carries_shift_terminal() -> None:
    cfg = {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "base_image_seq_len": 256,
        "base_shift": 0.5,
        "max_image_seq_len": 8192,
        "max_shift": 0.9,
        "num_train_timesteps": 1000,
        "shift": 1.0,
        "shift_terminal": 0.02,
        "time_shift_type": "exponential",
        "use_dynamic_shifting": True,
    }  # fmt: skip  (Qwen/Qwen-Image scheduler/scheduler_config.json)
    prediction, spec = scheduler_from_diffusers(cfg)
    assert prediction == "flow" and spec["shift_terminal"] == 0.02
    assert spec["dynamic_shift"] == {
        "base_seq_len": 256,
        "max_seq_len": 8192,
        "base_shift": 0.5,
        "max_shift": 0.9,
    }
    back = scheduler_to_diffusers("flow", spec)
    assert back["shift_terminal"] == 0.02 and back["use_dynamic_shifting"] is True
