"""The text-to-image pipeline on a tiny random model: determinism, per-sample seeds, img2img, callbacks."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from latentworks.pipelines import Pipeline
from latentworks.pipelines.text_to_image import images_to_tensor, tensor_to_images


def arr(img) -> np.ndarray:  # noqa: ANN001
    return np.asarray(img, dtype=np.int16)


def test_same_seed_same_image_and_other_seed_differs(tiny_pipe: Pipeline) -> None:
    a = tiny_pipe("a red apple", seed=3).images[0]
    b = tiny_pipe("a red apple", seed=3).images[0]
    c = tiny_pipe("a red apple", seed=4).images[0]
    assert np.array_equal(arr(a), arr(b))
    assert not np.array_equal(arr(a), arr(c))


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m_sde"])
def test_batch_of_seeds_equals_single_runs(tiny_pipe: Pipeline, sampler: str) -> None:
    batch = tiny_pipe("a blue heart", seed=10, batch=3, sampler=sampler)
    assert batch.seeds == [10, 11, 12]
    for i, seed in enumerate(batch.seeds):
        single = tiny_pipe("a blue heart", seed=seed, sampler=sampler)
        torch.testing.assert_close(single.latents[0], batch.latents[i], rtol=1e-4, atol=1e-5)


def test_prompt_changes_the_image(tiny_pipe: Pipeline) -> None:
    a = tiny_pipe("a red apple", seed=1).latents
    b = tiny_pipe("a grinning face", seed=1).latents
    assert (a - b).abs().max() > 1e-4


def _count_network_samples(net: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """Batch size of every call of ``net``."""
    sizes: list[int] = []
    handle = net.register_forward_pre_hook(lambda _module, args: sizes.append(int(args[0].shape[0])))
    return sizes, handle


def test_guidance_one_skips_uncond_and_differs_from_guided(tiny_pipe: Pipeline) -> None:
    net = tiny_pipe.model.denoiser_net
    sizes, handle = _count_network_samples(net)
    try:
        a = tiny_pipe("a red apple", seed=1, guidance=1.0, steps=4, sampler="euler", batch=2).latents
        unguided = list(sizes)
        sizes.clear()
        b = tiny_pipe("a red apple", seed=1, guidance=4.0, steps=4, sampler="euler", batch=2).latents
        guided = list(sizes)
    finally:
        handle.remove()
    # Euler takes one network evaluation per step: 4 steps x 2 images, and twice that with the
    # unconditional half; guidance 1 runs no unconditional evaluation at all.
    assert sum(unguided) == 4 * 2 and sum(guided) == 4 * 2 * 2
    assert (a - b).abs().max() > 1e-4


def test_guidance_interval_guides_only_inside_it(tiny_pipe: Pipeline) -> None:
    plain = tiny_pipe("a red apple", seed=1, guidance=1.0)
    full = tiny_pipe("a red apple", seed=1, guidance=4.0)
    # An interval that holds every sigma of the schedule is plain CFG; one that holds none is no guidance.
    wide = tiny_pipe("a red apple", seed=1, guidance=4.0, guidance_interval=(0.0, float("inf")))
    empty = tiny_pipe("a red apple", seed=1, guidance=4.0, guidance_interval=(1e6, 2e6))
    torch.testing.assert_close(wide.latents, full.latents)
    torch.testing.assert_close(empty.latents, plain.latents)
    assert wide.parameters["guidance_interval"] == [0.0, float("inf")]
    assert full.parameters["guidance_interval"] is None
    # Guiding only the low-noise half differs from both.
    seen: list[float] = []
    tiny_pipe("a", seed=1, steps=4, callback=lambda s: seen.append(float(s.sigma)))
    mid = (seen[1] + seen[2]) / 2
    half = tiny_pipe("a red apple", seed=1, steps=4, guidance=4.0, guidance_interval=(0.0, mid)).latents
    for other in (tiny_pipe("a red apple", seed=1, steps=4, guidance=g).latents for g in (1.0, 4.0)):
        assert (half - other).abs().max() > 1e-5


def test_guidance_interval_comes_from_the_model_defaults(tiny_pipe: Pipeline, monkeypatch) -> None:  # noqa: ANN001
    defaults = {**tiny_pipe.model.defaults, "guidance_interval": [1e6, 2e6]}
    monkeypatch.setitem(tiny_pipe.model.meta, "defaults", defaults)
    r = tiny_pipe("a red apple", seed=1, guidance=4.0)
    assert r.parameters["guidance_interval"] == [1e6, 2e6]
    torch.testing.assert_close(r.latents, tiny_pipe("a red apple", seed=1, guidance=1.0).latents)
    # An explicit argument wins over the default.
    full = tiny_pipe("a red apple", seed=1, guidance=4.0, guidance_interval=(0.0, float("inf"))).latents
    assert (full - r.latents).abs().max() > 1e-4


def test_img2img_strength_zero_returns_input_up_to_vae(tiny_pipe: Pipeline) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    out = tiny_pipe("anything", seed=0, init_image=img, strength=0.0).images[0]
    # The VAE round trip alone, by hand:
    x = images_to_tensor([img], (16, 16))
    with torch.no_grad():
        vae = tiny_pipe.model.vae
        expected = tensor_to_images(vae.decode(vae.encode(x).mode()))[0]
    assert np.array_equal(arr(out), arr(expected))


def test_img2img_strength_changes_output_progressively(tiny_pipe: Pipeline) -> None:
    from PIL import Image

    img = Image.new("RGB", (16, 16), (200, 30, 30))
    x0 = tiny_pipe.encode_images([img], (16, 16))
    d_low = (tiny_pipe("x", seed=0, init_image=img, strength=0.2).latents - x0).abs().mean()
    d_high = (tiny_pipe("x", seed=0, init_image=img, strength=0.9).latents - x0).abs().mean()
    assert d_low < d_high


def test_callback_sees_every_step_and_can_cancel(tiny_pipe: Pipeline) -> None:
    seen = []
    tiny_pipe("a", seed=0, steps=5, callback=lambda s: seen.append((s.i, s.total, s.preview().shape)))
    assert [s[0] for s in seen] == list(range(5)) and all(s[1] == 5 for s in seen)
    assert seen[0][2][-1] == 3
    calls = []

    def stop_after_two(step):  # noqa: ANN001, ANN202
        calls.append(step.i)
        return step.i < 1

    tiny_pipe("a", seed=0, steps=5, callback=stop_after_two)
    assert calls == [0, 1]


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_flow_model_runs_through_the_same_pipeline(tiny_flow_model, monkeypatch, sampler: str) -> None:  # noqa: ANN001
    """The flow path end to end with an analytic network: for data that is a single point ``c``, the
    rectified-flow velocity at ``x = (1 - sigma) c + sigma n`` is ``v = n - c = (x - c) / sigma``, and every
    sampler must land exactly on ``c``. An eps/v reading of the output, a VE start or a wrong timestep
    scale (the network gets ``t = 1000 sigma``) all miss it."""
    from latentworks.diffusion.noise import seeded_noise

    pipe = Pipeline.from_pretrained(tiny_flow_model)
    a = pipe("a", seed=2, sampler=sampler).latents
    b = pipe("a", seed=2, sampler=sampler).latents
    assert torch.equal(a, b) and torch.isfinite(a).all()

    c = torch.linspace(-1.5, 1.5, 4 * 8 * 8).reshape(1, 4, 8, 8)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def point_mass_velocity(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        seen.append((x.clone(), t.clone()))
        sigma = (t / 1000.0).reshape(-1, 1, 1, 1)
        return (x - c) / sigma

    monkeypatch.setattr(pipe.model.denoiser_net, "forward", point_mass_velocity)
    steps: list[float] = []
    out = pipe("a", seed=2, sampler=sampler, steps=5, guidance=1.0, callback=lambda s: steps.append(s.sigma))
    torch.testing.assert_close(out.latents, c, atol=1e-5, rtol=1e-5)
    # The first evaluation sees sigma_max * n (flow noising of a zero start: sigma_max = 1 at shift 1).
    assert abs(float(seen[0][1][0]) - 1000.0 * float(steps[0])) < 1e-2 and abs(float(steps[0]) - 1.0) < 1e-6
    torch.testing.assert_close(seen[0][0], seeded_noise((4, 8, 8), [2]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampler": "eulr"}, "unknown sampler 'eulr'; choose one of: euler"),
        ({"scheduler": "karas"}, "unknown scheduler 'karas'; choose one of"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"width": 15}, "multiples of 2"),
        ({"batch": 0}, "batch must be at least 1"),
        ({"guidance_interval": (0.5, 0.1)}, "0 <= lo <= hi, got (0.5, 0.1)"),
        ({"guidance_interval": (0.5,)}, "must be a pair (sigma_lo, sigma_hi)"),
    ],
)
def test_bad_arguments_are_clear_errors(tiny_pipe: Pipeline, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny_pipe("a", **kwargs)


def test_missing_model_folder_is_a_clear_error(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(FileNotFoundError, match="no latentworks model folder"):
        Pipeline.from_pretrained(tmp_path / "nope")
