"""ControlNet application through the guidance layer (ControlDenoiser inside CFG), on a tiny U-Net.

Expected values come from calling the U-Net directly with hand-summed residuals, or from sampling without
any ControlNet; the active steps come from the schedule's own timesteps, not from ``percent_to_sigma``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import Tensor

from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.control import ControlDenoiser, ControlInput, ControlResiduals, cat_controls
from latentworks.diffusion.denoisers import DiscreteModelSampling, make_denoiser
from latentworks.diffusion.guidance import CFGDenoiser, GuidedCond
from latentworks.models.controlnet import ControlNet
from latentworks.models.unet import PRESETS, UNet
from latentworks.pipelines.sampling import NetworkModel, denoise_latents, seeds_for
from support.controlnet import tiny_controlnet

SAMPLING = DiscreteModelSampling()


@pytest.fixture(scope="module")
def unet() -> UNet:
    torch.manual_seed(0)
    return UNet(PRESETS["tiny"]).eval()


@pytest.fixture(scope="module")
def nets() -> tuple[ControlNet, ControlNet]:
    return tiny_controlnet(PRESETS["tiny"], seed=1), tiny_controlnet(PRESETS["tiny"], seed=2)


def _cond(seed: int, b: int = 1) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(tokens=torch.randn(b, 3, PRESETS["tiny"].context_dim, generator=g))


def _hint(seed: int, size: int = 16) -> Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


class Recorder:
    """A control network that remembers the timesteps it was called at."""

    def __init__(self, net: ControlNet) -> None:
        self.net, self.calls = net, []  # type: ignore[var-annotated]
        self.hint_factor = net.hint_factor

    def check_model(self, network: object) -> None:
        self.net.check_model(network)

    def __call__(self, x: Tensor, t: Tensor, cond: Conditioning, hint: Tensor) -> ControlResiduals:
        self.calls.append(float(t[0]))
        return self.net(x, t, cond, hint)


def _sample(unet: UNet, cond: Conditioning, uncond: Conditioning, sigmas: Tensor) -> Tensor:
    model = NetworkModel(unet, "eps", SAMPLING)
    x0 = torch.zeros(1, 4, 8, 8)
    return denoise_latents(model, x0, sigmas, seeds_for(3, 1), cond, uncond, 4.0, "euler")


def _sigmas(timesteps: list[float]) -> Tensor:
    return torch.cat(
        [SAMPLING.sigma(torch.tensor(timesteps, dtype=torch.float64)), torch.zeros(1, dtype=torch.float64)]
    ).float()


def test_strength_zero_is_bit_identical_and_strength_one_is_not(
    unet: UNet, nets: tuple[ControlNet, ControlNet]
) -> None:
    cond, uncond = _cond(1), _cond(2)
    sigmas = _sigmas([999.0, 700.0, 400.0, 100.0])
    plain = _sample(unet, cond, uncond, sigmas)
    off = ControlInput(nets[0], _hint(5), strength=0.0)
    got = _sample(unet, cond.with_control(off), uncond.with_control(off), sigmas)
    assert torch.equal(got, plain)
    on = replace(off, strength=1.0)
    assert not torch.allclose(
        _sample(unet, cond.with_control(on), uncond.with_control(on), sigmas), plain, atol=1e-3
    )


def test_start_end_percent_switch_at_the_right_steps(unet: UNet, nets: tuple[ControlNet, ControlNet]) -> None:
    # start 0.25 -> timesteps <= 0.75 * 999 = 749.25; end 0.65 -> timesteps >= 0.35 * 999 = 349.65
    timesteps = [999.0, 800.0, 600.0, 400.0, 200.0, 50.0]
    rec = Recorder(nets[0])
    control = ControlInput(rec, _hint(5), strength=1.0, start_percent=0.25, end_percent=0.65)  # type: ignore[arg-type]
    _sample(unet, _cond(1).with_control(control), _cond(2).with_control(control), _sigmas(timesteps))
    assert rec.calls == pytest.approx([600.0, 400.0], abs=1e-2)
    rec.calls.clear()
    full = replace(control, start_percent=0.0, end_percent=1.0)
    _sample(unet, _cond(1).with_control(full), _cond(2).with_control(full), _sigmas(timesteps))
    assert rec.calls == pytest.approx(timesteps, abs=1e-2)


def test_several_controlnets_sum_their_scaled_residuals(
    unet: UNet, nets: tuple[ControlNet, ControlNet]
) -> None:
    a, b = nets
    h1, h2 = _hint(5), _hint(6)
    cond = (
        _cond(1)
        .with_control(ControlInput(a, h1, strength=0.5))
        .with_control(ControlInput(b, h2, strength=0.8))
    )
    x, sigma = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4)), torch.tensor([3.0])
    denoiser = make_denoiser(unet, "eps", SAMPLING)
    with torch.no_grad():
        got = ControlDenoiser(denoiser)(x, sigma, cond)
        x_in, t = denoiser.network_input(x, sigma)
        plain = replace(cond, control=())
        res = a(x_in, t, plain, h1).scaled(0.5) + b(x_in, t, plain, h2).scaled(0.8)
        expected = denoiser.network_output(x, sigma, unet(x_in, t, plain, control=res))
    assert torch.equal(got, expected)


def test_control_on_the_prompt_only_leaves_the_negative_untouched(
    unet: UNet, nets: tuple[ControlNet, ControlNet]
) -> None:
    """ControlNetApply (old) controls the positive only; batched CFG must equal two separate calls."""
    cond = _cond(1).with_control(ControlInput(nets[0], _hint(5), strength=0.9))
    uncond = _cond(2)
    x, sigma = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4)), torch.tensor([3.0])
    inner = ControlDenoiser(make_denoiser(unet, "eps", SAMPLING))
    with torch.no_grad():
        got = CFGDenoiser(inner, 5.0)(x, sigma, GuidedCond(cond, uncond))
        x0_c, x0_u = inner(x, sigma, cond), inner(x, sigma, uncond)
    assert (got - (x0_u + 5.0 * (x0_c - x0_u))).abs().max() < 1e-4  # batched vs single calls: float32 noise
    assert (x0_c - x0_u).abs().max() > 0.1


def test_cat_controls_weights_rows_without_the_control_zero(nets: tuple[ControlNet, ControlNet]) -> None:
    c = ControlInput(nets[0], _hint(5))
    (merged,) = cat_controls([((c,), 2), ((), 3)])
    assert merged.sample_weight is not None and merged.sample_weight.tolist() == [1, 1, 0, 0, 0]
    assert torch.equal(merged.hint[:2], c.hint.expand(2, -1, -1, -1)) and merged.hint[2:].abs().sum() == 0
    assert cat_controls([((c,), 2), ((c,), 2)]) == (c,)


def test_controlnet_of_another_family_is_refused(unet: UNet) -> None:
    other = tiny_controlnet(replace(PRESETS["tiny"], context_dim=32), seed=1)
    cond = _cond(1).with_control(ControlInput(other, _hint(5)))
    with pytest.raises(ValueError, match="another model family"):
        ControlDenoiser(make_denoiser(unet, "eps", SAMPLING))(
            torch.zeros(1, 4, 8, 8), torch.tensor([3.0]), cond
        )


def test_bad_percent_range_is_refused(nets: tuple[ControlNet, ControlNet]) -> None:
    with pytest.raises(ValueError, match="start_percent"):
        ControlInput(nets[0], _hint(5), start_percent=0.8, end_percent=0.2)


def test_t2i_adapter_features_are_computed_once_per_run() -> None:
    from latentworks.models.t2i_adapter import T2IAdapter, T2IAdapterConfig

    torch.manual_seed(0)
    unet = UNet(
        replace(PRESETS["tiny"], transformer_depth=(1, 1))
    ).eval()  # full adapters need attention at level 0
    adapter = T2IAdapter(T2IAdapterConfig(channels=(32, 64), num_res_blocks=1, downscale_factor=2)).eval()
    calls = []

    class Counting:
        reads_latent = False
        hint_factor = adapter.hint_factor
        check_model = adapter.check_model

        def __call__(self, x: Tensor, t: Tensor, cond: Conditioning, hint: Tensor) -> ControlResiduals:
            calls.append(float(t[0]))
            return adapter(x, t, cond, hint)

    control = ControlInput(Counting(), _hint(5), strength=0.7)  # type: ignore[arg-type]
    sigmas = _sigmas([999.0, 700.0, 400.0, 100.0])
    got = _sample(unet, _cond(1).with_control(control), _cond(2).with_control(control), sigmas)
    assert len(calls) == 1
    plain = _sample(unet, _cond(1), _cond(2), sigmas)
    assert not torch.allclose(got, plain, atol=1e-3)


def test_a_half_precision_controlnet_follows_the_model_dtype(unet: UNet) -> None:
    net = tiny_controlnet(PRESETS["tiny"], seed=3).half()  # as an fp16 file loads
    cond = _cond(1).with_control(ControlInput(net, _hint(5)))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = ControlDenoiser(make_denoiser(unet, "eps", SAMPLING))(x, torch.tensor([3.0]), cond)
    assert net.conv_in.weight.dtype == torch.float32 and bool(torch.isfinite(out).all())
