"""Our FLUX ControlNet against diffusers' ``FluxControlNetModel`` (and ``FluxTransformer2DModel`` taking its
residuals) on identical random weights, at small widths in the real layout.

The diffusers side is fed the way ``FluxControlNetPipeline`` does it: packed latents and packed hint latents,
explicit position ids, ``timestep = t / 1000``, ``controlnet_mode`` (B, 1) for the Union variant. Our side gets
unpacked latents and ``t`` in [0, 1000]. The weights come from a diffusers state dict saved as a bare
``.safetensors`` file that latentworks detects from its shapes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from latentworks.checkpoints.keymaps.flux_diffusers import flux_from_diffusers
from latentworks.diffusion.conditioning import Conditioning
from latentworks.families.controlnet import FLUX_DIFFUSERS, detect_controlnet, load_controlnet
from latentworks.models.controlnet_flux import FluxControlNet
from latentworks.models.flux import Flux, FluxConfig

diffusers = pytest.importorskip("diffusers")
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline  # noqa: E402

TOLERANCE = 1e-5
HEADS, HEAD_DIM, CONTEXT, POOLED = 2, 16, 32, 24
AXES = (4, 6, 6)  # what latentworks infers for a 16-wide head


def _perturb(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Random init leaves zero-initialised layers (the ControlNet's outputs); perturb every weight."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def _diffusers_controlnet(*, guidance: bool, num_mode: int | None, layers: int = 2, singles: int = 3):  # noqa: ANN202
    return _perturb(
        diffusers.FluxControlNetModel(
            in_channels=64, num_layers=layers, num_single_layers=singles, attention_head_dim=HEAD_DIM,
            num_attention_heads=HEADS, joint_attention_dim=CONTEXT, pooled_projection_dim=POOLED,
            guidance_embeds=guidance, axes_dims_rope=AXES, num_mode=num_mode,
        ),
        0.1,
    )  # fmt: skip


def _inputs(b: int, h: int, w: int, n_txt: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "x": torch.randn(b, 16, h, w, generator=g),
        "hint": torch.randn(b, 16, h, w, generator=g),
        "tokens": torch.randn(b, n_txt, CONTEXT, generator=g),
        "pooled": torch.randn(b, POOLED, generator=g),
        "t": torch.tensor([1000.0, 250.0])[:b],  # sigma = t / 1000 exactly representable
        "guidance": torch.tensor([3.5, 1.0])[:b],
    }


def _theirs(ref, d: dict[str, torch.Tensor], *, guidance: bool, mode: int | None):  # noqa: ANN001, ANN202
    b, _, h, w = d["x"].shape
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, d["x"].device, d["x"].dtype)
    return ref(
        hidden_states=FluxPipeline._pack_latents(d["x"], b, 16, h, w),
        controlnet_cond=FluxPipeline._pack_latents(d["hint"], b, 16, h, w),
        controlnet_mode=None if mode is None else torch.full((b, 1), mode, dtype=torch.long),
        encoder_hidden_states=d["tokens"],
        pooled_projections=d["pooled"],
        timestep=d["t"] / 1000,
        img_ids=img_ids,
        txt_ids=torch.zeros(d["tokens"].shape[1], 3),
        guidance=d["guidance"] if guidance else None,
        return_dict=False,
    )


def _load(ref: torch.nn.Module, tmp_path: Path) -> FluxControlNet:
    file = tmp_path / "flux_cn.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(file))
    net = load_controlnet(file)
    assert isinstance(net, FluxControlNet)
    return net


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


@pytest.mark.parametrize(("guidance", "num_mode", "mode"), [(True, None, None), (False, 10, 4)])
def test_flux_controlnet_residuals_match_diffusers(
    tmp_path: Path, guidance: bool, num_mode: int | None, mode: int | None
) -> None:
    torch.manual_seed(0)
    ref = _diffusers_controlnet(guidance=guidance, num_mode=num_mode)
    net = _load(ref, tmp_path)
    assert net.config.flux.axes_dim == AXES and net.config.num_modes == num_mode
    d = _inputs(2, 8, 12)
    with torch.no_grad():
        want_double, want_single = _theirs(ref, d, guidance=guidance, mode=mode)
        extra = {"guidance": d["guidance"]} if guidance else {}
        cond = Conditioning(tokens=d["tokens"], pooled=d["pooled"], extra=extra)
        got = (net.with_mode(mode) if mode is not None else net)(d["x"], d["t"], cond, d["hint"])
    assert len(got.double) == len(want_double) == 2 and len(got.single) == len(want_single) == 3
    for ours, theirs in zip((*got.double, *got.single), (*want_double, *want_single), strict=True):
        assert ours.shape == theirs.shape == (2, 24, HEADS * HEAD_DIM)
        assert theirs.std() > 0.01
        assert _rel(ours, theirs) <= TOLERANCE
    if mode is not None:  # the mode token matters: another mode gives other residuals
        other = net.with_mode(mode + 1)(d["x"], d["t"], cond, d["hint"])
        assert _rel(other.double[0], want_double[0]) > 1e-3


def test_flux_transformer_applies_controlnet_residuals_as_diffusers(tmp_path: Path) -> None:
    """3 double / 5 single model blocks driven by 2 / 3 ControlNet residuals: the block-to-residual rule
    (``i // ceil(n / k)``) and where the residual lands (image tokens after each block) match diffusers."""
    torch.manual_seed(0)
    ref_cn = _diffusers_controlnet(guidance=True, num_mode=None)
    ref = _perturb(
        diffusers.FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=3, num_single_layers=5, attention_head_dim=HEAD_DIM,
            num_attention_heads=HEADS, joint_attention_dim=CONTEXT, pooled_projection_dim=POOLED,
            guidance_embeds=True, axes_dims_rope=AXES,
        ),
        0.05,
    )  # fmt: skip
    config = FluxConfig(
        in_channels=16, width=HEADS * HEAD_DIM, num_heads=HEADS, double_depth=3, single_depth=5,
        context_dim=CONTEXT, pooled_dim=POOLED, axes_dim=AXES, guidance_embed=True,
    )  # fmt: skip
    with torch.device("meta"):
        model = Flux(config)
    model.load_state_dict(flux_from_diffusers(ref.state_dict(), config), strict=True, assign=True)
    model.eval()
    net = _load(ref_cn, tmp_path)
    net.check_model(model)
    d = _inputs(2, 8, 8)
    b, _, h, w = d["x"].shape
    with torch.no_grad():
        double, single = _theirs(ref_cn, d, guidance=True, mode=None)
        want = ref(
            hidden_states=FluxPipeline._pack_latents(d["x"], b, 16, h, w),
            encoder_hidden_states=d["tokens"],
            pooled_projections=d["pooled"],
            timestep=d["t"] / 1000,
            img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, d["x"].device, d["x"].dtype),
            txt_ids=torch.zeros(d["tokens"].shape[1], 3),
            guidance=d["guidance"],
            controlnet_block_samples=[s * 0.7 for s in double],
            controlnet_single_block_samples=[s * 0.7 for s in single],
        ).sample
        want = FluxPipeline._unpack_latents(want, h * 8, w * 8, 8)
        cond = Conditioning(tokens=d["tokens"], pooled=d["pooled"], extra={"guidance": d["guidance"]})
        residuals = net(d["x"], d["t"], cond, d["hint"]).scaled(0.7)
        got = model(d["x"], d["t"], cond, control=residuals)
        plain = model(d["x"], d["t"], cond)
    assert _rel(got, want) <= 1e-5
    assert _rel(plain, want) > 1e-2  # the residuals do change the output


def test_flux_controlnet_key_map_round_trips() -> None:
    torch.manual_seed(0)
    ref = _diffusers_controlnet(guidance=True, num_mode=3)
    theirs = {k: v.contiguous() for k, v in ref.state_dict().items()}
    found = detect_controlnet({k: tuple(v.shape) for k, v in theirs.items()})
    assert found.layout is FLUX_DIFFUSERS and found.family is not None and found.family.name == "flux-dev"
    ours = FLUX_DIFFUSERS.to_ours(theirs, found.config)
    back = FLUX_DIFFUSERS.from_ours(ours, found.config)
    assert back.keys() == theirs.keys()
    assert all(torch.equal(back[k], theirs[k]) for k in theirs)
