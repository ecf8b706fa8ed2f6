"""LoRA files in kohya and PEFT layouts change outputs exactly as ``W + strength * alpha / rank * B @ A`` applied
by hand to a deep copy does (U-Net, FLUX with fused-qkv row slices, a transformers CLIP text model); several
LoRAs add up; ``remove()`` restores weights and outputs bit-exactly; keys that match nothing are reported."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from latentworks.checkpoints.io import save_file_atomic
from latentworks.checkpoints.lora import (
    LoraError,
    apply_loras,
    load_lora,
    parse_lora,
    resolve_lora,
    resolve_loras,
)
from latentworks.diffusion.conditioning import Conditioning
from latentworks.models.flux import PRESETS as FLUX_PRESETS
from latentworks.models.flux import Flux
from latentworks.models.unet import PRESETS as UNET_PRESETS
from latentworks.models.unet import UNet

RANK, ALPHA = 4, 2.0


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (zero-init layers would hide LoRA effects)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval().requires_grad_(False)


def pair(
    g: torch.Generator, weight: Tensor, rows: int | None = None, conv: bool = False
) -> tuple[Tensor, Tensor]:
    """Random (down, up) for ``weight`` (out, in[, kh, kw]); ``rows`` overrides the output size."""
    out = weight.shape[0] if rows is None else rows
    if conv:  # LoCon: k x k down, 1 x 1 up
        return torch.randn(RANK, *weight.shape[1:], generator=g) * 0.3, torch.randn(
            out, RANK, 1, 1, generator=g
        ) * 0.3
    return torch.randn(RANK, weight.shape[1], generator=g) * 0.3, torch.randn(out, RANK, generator=g) * 0.3


def by_hand(model: nn.Module, updates: list[tuple[str, Tensor, Tensor, float, slice]]) -> nn.Module:
    """A deep copy with ``W[rows] += scale * up @ down`` for each update (our module names)."""
    ref = copy.deepcopy(model)
    mods = dict(ref.named_modules())
    with torch.no_grad():
        for name, down, up, scale, rows in updates:
            w = mods[name].weight
            w[rows] += scale * (up.flatten(1) @ down.flatten(1)).reshape(w[rows].shape)
    return ref


def kohya_keys(prefix: str, name: str, down: Tensor, up: Tensor, alpha: float) -> dict[str, Tensor]:
    m = prefix + name.replace(".", "_")
    return {f"{m}.lora_down.weight": down, f"{m}.lora_up.weight": up, f"{m}.alpha": torch.tensor(alpha)}


def peft_keys(prefix: str, name: str, down: Tensor, up: Tensor) -> dict[str, Tensor]:
    return {f"{prefix}{name}.lora_A.weight": down, f"{prefix}{name}.lora_B.weight": up}


# ------------------------------------------------------------------------------------------------ U-Net

# (diffusers module, our module, LoCon conv?) chosen to cover attention, feed-forward, projections,
# resnet convs (3x3 LoCon), time embedding and the mid block of the tiny preset.
UNET_TARGETS = [
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "down.1.transformers.0.blocks.0.self_attn.q", False),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", "down.1.transformers.0.blocks.0.cross_attn.k", False),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0", "down.1.transformers.0.blocks.0.self_attn.out", False),
    ("mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj", "mid.transformer.blocks.0.ff.geglu", False),
    ("up_blocks.0.attentions.1.proj_in", "up.0.transformers.1.proj_in", False),
    ("time_embedding.linear_1", "time_embed.fc1", False),
    ("down_blocks.0.resnets.0.conv1", "down.0.resnets.0.conv1", True),
    ("up_blocks.1.resnets.1.conv2", "up.1.resnets.1.conv2", True),
]  # fmt: skip


@pytest.fixture(scope="module")
def unet() -> UNet:
    torch.manual_seed(0)
    return perturbed(UNet(UNET_PRESETS["tiny"]))  # type: ignore[return-value]


def unet_inputs() -> tuple[Tensor, Tensor, Conditioning]:
    g = torch.Generator().manual_seed(1)
    cfg = UNET_PRESETS["tiny"]
    x = torch.randn(2, cfg.in_channels, 8, 8, generator=g)
    cond = Conditioning(tokens=torch.randn(2, 5, cfg.context_dim, generator=g))
    return x, torch.tensor([10.0, 700.0]), cond


def unet_lora(unet: UNet, seed: int, fmt: str) -> tuple[dict[str, Tensor], list]:
    """A LoRA over UNET_TARGETS in ``fmt`` ('kohya' | 'peft') and its by-hand updates (scale included)."""
    g = torch.Generator().manual_seed(seed)
    mods = dict(unet.named_modules())
    sd: dict[str, Tensor] = {}
    updates = []
    for theirs, ours, conv in UNET_TARGETS:
        down, up = pair(g, mods[ours].weight, conv=conv)
        if fmt == "kohya":
            sd |= kohya_keys("lora_unet_", theirs, down, up, ALPHA)
            updates.append((ours, down, up, ALPHA / RANK, slice(None)))
        else:  # PEFT without alpha: scale 1
            sd |= peft_keys("unet.", theirs, down, up)
            updates.append((ours, down, up, 1.0, slice(None)))
    return sd, updates


def scaled(updates: list, strength: float) -> list:
    return [(n, d, u, s * strength, r) for n, d, u, s, r in updates]


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
@pytest.mark.parametrize("mode", ["patch", "hook"])
def test_unet_lora_file_matches_the_update_by_hand(unet: UNet, tmp_path: Path, fmt: str, mode: str) -> None:
    sd, updates = unet_lora(unet, seed=2, fmt=fmt)
    path = tmp_path / f"{fmt}.safetensors"
    save_file_atomic(sd, path)
    lora = load_lora(path)
    resolved = resolve_lora(lora, unet, target="unet")
    assert resolved.unmatched == ()
    assert sorted(p.module for p in resolved.patches) == sorted(o for _, o, _ in UNET_TARGETS)
    x, t, cond = unet_inputs()
    with torch.no_grad():
        base = unet(x, t, cond)
        expected = by_hand(unet, scaled(updates, 0.7))(x, t, cond)
        with apply_loras(unet, [(resolved, 0.7)], mode=mode):  # type: ignore[arg-type]
            got = unet(x, t, cond)
        after = unet(x, t, cond)
    assert (expected - base).abs().max() > 1e-2  # the LoRA does change the output
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(after, base)  # removed: bit-exact


def test_two_loras_add_up_and_remove_restores_every_tensor_bit_exactly(unet: UNet) -> None:
    sd_a, up_a = unet_lora(unet, seed=3, fmt="kohya")
    sd_b, up_b = unet_lora(unet, seed=4, fmt="peft")
    a = resolve_lora(parse_lora(sd_a, name="a"), unet)
    b = resolve_lora(parse_lora(sd_b, name="b"), unet)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    x, t, cond = unet_inputs()
    with torch.no_grad():
        expected = by_hand(unet, scaled(up_a, 0.5) + scaled(up_b, -1.2))(x, t, cond)
        handle = apply_loras(unet, [(a, 0.5), (b, -1.2)])
        got = unet(x, t, cond)
        changed = [k for k, v in unet.state_dict().items() if not torch.equal(v, before[k])]
        handle.remove()
        handle.remove()  # idempotent
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert sorted(changed) == sorted(f"{o}.weight" for _, o, _ in UNET_TARGETS)  # only the patched tensors
    for k, v in unet.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_fp16_patch_is_summed_in_float32_and_restored_exactly(unet: UNet) -> None:
    half = copy.deepcopy(unet).half()
    sd, updates = unet_lora(unet, seed=5, fmt="kohya")
    res = resolve_lora(parse_lora(sd), half)
    before = {k: v.clone() for k, v in half.state_dict().items()}
    mods = dict(half.named_modules())
    with apply_loras(half, [(res, 1.0)]):
        for name, down, up, scale, _ in updates:
            w32 = before[f"{name}.weight"].float() + scale * (up.flatten(1) @ down.flatten(1)).reshape(
                mods[name].weight.shape
            )
            assert torch.equal(mods[name].weight, w32.half())  # one rounding, not one per LoRA term
    assert all(torch.equal(v, before[k]) for k, v in half.state_dict().items())


def test_unmatched_keys_are_reported_and_a_lora_with_no_match_is_an_error(
    unet: UNet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    g = torch.Generator().manual_seed(6)
    sd, _ = unet_lora(unet, seed=6, fmt="kohya")
    bogus = kohya_keys("lora_unet_", "down_blocks.7.attentions.0.nope", *pair(g, torch.zeros(8, 8)), ALPHA)
    sd |= bogus
    sd["lora_unet_x.hada_w1_a"] = torch.zeros(2, 2)  # LoHa: not supported, listed
    lora = parse_lora(sd, name="mixed.safetensors")
    assert lora.unsupported == ("lora_unet_x.hada_w1_a",)
    with caplog.at_level(logging.WARNING, logger="latentworks.checkpoints.lora"):
        res = resolve_lora(lora, unet)
    assert res.unmatched == ("lora_unet_down_blocks_7_attentions_0_nope",)
    assert len(res.patches) == len(UNET_TARGETS)
    assert "lora_unet_down_blocks_7_attentions_0_nope" in caplog.text and "mixed.safetensors" in caplog.text

    path = tmp_path / "other_model.safetensors"
    save_file_atomic(bogus, path)
    with pytest.raises(LoraError, match="other_model.safetensors"):
        resolve_lora(load_lora(path), unet)
    with pytest.raises(LoraError, match="other_model.safetensors"):
        resolve_loras(load_lora(path), unet, ())
    # right name, wrong size: a LoRA for another model
    wrong = kohya_keys("lora_unet_", "time_embedding.linear_1", *pair(g, torch.zeros(7, 9)), ALPHA)
    with pytest.raises(LoraError, match="different model"):
        resolve_lora(parse_lora(wrong, name="wrong"), unet)
    with pytest.raises(LoraError, match="no LoRA weights"):
        parse_lora({"foo.weight": torch.zeros(1)}, name="notalora")


def test_old_diffusers_attention_processor_layout_reads_like_peft(unet: UNet) -> None:
    g = torch.Generator().manual_seed(13)
    attn = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1"
    mods = dict(unet.named_modules())
    q = pair(g, mods["down.1.transformers.0.blocks.0.self_attn.q"].weight)
    out = pair(g, mods["down.1.transformers.0.blocks.0.self_attn.out"].weight)
    old = {
        f"{attn}.processor.to_q_lora.down.weight": q[0], f"{attn}.processor.to_q_lora.up.weight": q[1],
        f"{attn}.processor.to_out_lora.down.weight": out[0], f"{attn}.processor.to_out_lora.up.weight": out[1],
    }  # fmt: skip
    peft = peft_keys("", f"{attn}.to_q", *q) | peft_keys("", f"{attn}.to_out.0", *out)
    a, b = resolve_lora(parse_lora(old), unet), resolve_lora(parse_lora(peft), unet)
    assert a.unmatched == () and len(a.patches) == 2
    assert [p.module for p in a.patches] == [p.module for p in b.patches]
    assert all(torch.equal(x.down, y.down) and torch.equal(x.up, y.up) for x, y in zip(a.patches, b.patches))


def test_sdxl_style_kohya_lora_in_ldm_names(unet: UNet) -> None:
    """kohya SDXL LoRAs name the original LDM modules; written here by hand for the tiny preset
    (levels (32, 64), one resnet per level, attention on level 1)."""
    ldm = {
        "input_blocks.3.1.transformer_blocks.0.attn1.to_q": (
            "down.1.transformers.0.blocks.0.self_attn.q",
            False,
        ),
        "middle_block.1.transformer_blocks.0.ff.net.2": ("mid.transformer.blocks.0.ff.out", False),
        "output_blocks.0.1.proj_out": ("up.0.transformers.0.proj_out", False),
        "input_blocks.1.0.in_layers.2": ("down.0.resnets.0.conv1", True),
        "time_embed.0": ("time_embed.fc1", False),
    }
    mods = dict(unet.named_modules())
    g = torch.Generator().manual_seed(11)
    sd: dict[str, Tensor] = {}
    updates = []
    for theirs, (ours, conv) in ldm.items():
        down, up = pair(g, mods[ours].weight, conv=conv)
        sd |= kohya_keys("lora_unet_", theirs, down, up, ALPHA)
        updates.append((ours, down, up, ALPHA / RANK, slice(None)))
    res = resolve_lora(parse_lora(sd, name="sdxl-style"), unet)
    assert res.unmatched == ()
    assert {p.module for p in res.patches} == {o for o, _ in ldm.values()}
    x, t, cond = unet_inputs()
    with torch.no_grad():
        with apply_loras(unet, [(res, 1.0)]):
            got = unet(x, t, cond)
        want = by_hand(unet, updates)(x, t, cond)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_sdxl_kohya_lora_resolves_like_diffusers_converter_at_full_config() -> None:
    """Oracle: diffusers' own kohya-SDXL converter (LDM block names -> diffusers names) sends every
    transformer layer of the real SDXL U-Net to the same module of ours as our LDM resolution does
    (722 layers; the U-Net is built on the meta device, so this costs no memory)."""
    import types

    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )

    from latentworks.checkpoints.keymaps.sd_ldm import unet_ldm_module_map

    cfg = UNET_PRESETS["sdxl"]
    with torch.device("meta"):
        net = UNet(cfg)
    mods = dict(net.named_modules())
    sd: dict[str, Tensor] = {}
    for i, (ours, ldm) in enumerate(unet_ldm_module_map(cfg).items()):
        m = mods.get(ours)
        if isinstance(m, nn.Linear) and ".transformer" in ours:
            k = "lora_unet_" + ldm.replace(".", "_")
            sd[f"{k}.lora_down.weight"] = torch.zeros(1, m.weight.shape[1])
            sd[f"{k}.lora_up.weight"] = torch.zeros(m.weight.shape[0], 1)
            sd[f"{k}.alpha"] = torch.tensor(float(i % 7 + 1))
    ours_res = resolve_lora(parse_lora(dict(sd)), net)
    ns = types.SimpleNamespace(layers_per_block=cfg.layers_per_block)
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(
        _maybe_map_sgm_blocks_to_diffusers(dict(sd), ns)
    )
    theirs_res = resolve_lora(parse_lora(converted | {k: torch.tensor(v) for k, v in alphas.items()}), net)
    assert len(ours_res.patches) == len(sd) // 3 == 722 and ours_res.unmatched == theirs_res.unmatched == ()
    ours_map = {id(p.down): (p.module, p.scale) for p in ours_res.patches}
    theirs_map = {id(p.down): (p.module, p.scale) for p in theirs_res.patches}
    assert ours_map == theirs_map


# ------------------------------------------------------------------------------------------------- FLUX


@pytest.fixture(scope="module")
def flux() -> Flux:
    torch.manual_seed(0)
    return perturbed(Flux(FLUX_PRESETS["tiny"]))  # type: ignore[return-value]


def flux_inputs() -> tuple[Tensor, Tensor, Conditioning]:
    cfg = FLUX_PRESETS["tiny"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, 4, 4, generator=g)
    cond = Conditioning(
        tokens=torch.randn(2, 3, cfg.context_dim, generator=g),
        pooled=torch.randn(2, cfg.pooled_dim, generator=g),
        extra={"guidance": torch.tensor([3.5, 3.5])},
    )
    return x, torch.tensor([500.0, 900.0]), cond


@pytest.mark.parametrize("mode", ["patch", "hook"])
def test_flux_peft_lora_lands_on_row_slices_of_fused_layers(flux: Flux, mode: str) -> None:
    d, hidden = flux.config.width, flux.config.mlp_hidden_dim
    mods = dict(flux.named_modules())
    g = torch.Generator().manual_seed(7)
    # diffusers module -> (our module, rows), written out by hand from the FLUX layouts.
    targets = {
        "transformer_blocks.0.attn.to_q": ("double_blocks.0.img_attn.qkv", slice(0, d)),
        "transformer_blocks.0.attn.to_v": ("double_blocks.0.img_attn.qkv", slice(2 * d, 3 * d)),
        "transformer_blocks.0.attn.add_k_proj": ("double_blocks.0.txt_attn.qkv", slice(d, 2 * d)),
        "transformer_blocks.0.attn.to_out.0": ("double_blocks.0.img_attn.proj", slice(None)),
        "transformer_blocks.0.ff_context.net.2": ("double_blocks.0.txt_mlp.fc2", slice(None)),
        "single_transformer_blocks.0.attn.to_k": ("single_blocks.0.linear1", slice(d, 2 * d)),
        "single_transformer_blocks.0.proj_mlp": ("single_blocks.0.linear1", slice(3 * d, 3 * d + hidden)),
        "single_transformer_blocks.0.proj_out": ("single_blocks.0.linear2", slice(None)),
        "x_embedder": ("img_in", slice(None)),
    }
    sd: dict[str, Tensor] = {}
    updates = []
    for theirs, (ours, rows) in targets.items():
        n = mods[ours].weight[rows].shape[0]
        down, up = pair(g, mods[ours].weight, rows=n)
        sd |= peft_keys("transformer.", theirs, down, up)
        sd[f"transformer.{theirs}.alpha"] = torch.tensor(ALPHA)
        updates.append((ours, down, up, ALPHA / RANK, rows))
    # norm_out.linear is (scale, shift) in diffusers and (shift, scale) in ours: the update's rows swap.
    w = mods["final_layer.modulation.linear"].weight
    down, up = pair(g, w)
    sd |= peft_keys("transformer.", "norm_out.linear", down, up)
    half = w.shape[0] // 2
    updates.append(
        ("final_layer.modulation.linear", down, torch.cat([up[half:], up[:half]]), 1.0, slice(None))
    )

    res = resolve_lora(parse_lora(sd, name="flux-peft"), flux)
    assert res.unmatched == () and len(res.patches) == len(targets) + 1
    x, t, cond = flux_inputs()
    with torch.no_grad():
        base = flux(x, t, cond)
        expected = by_hand(flux, scaled(updates, 0.8))(x, t, cond)
        with apply_loras(flux, [(res, 0.8)], mode=mode):  # type: ignore[arg-type]
            got = flux(x, t, cond)
        assert torch.equal(flux(x, t, cond), base)
    assert (expected - base).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_flux_kohya_lora_in_bfl_names(flux: Flux) -> None:
    """kohya FLUX files name BFL modules: fused qkv and linear1 as a whole, ``img_mlp.0``, ``img_mod.lin``,
    ``final_layer.adaLN_modulation.1`` (same (shift, scale) order as ours: no swap)."""
    bfl = {
        "double_blocks.0.img_attn.qkv": "double_blocks.0.img_attn.qkv",
        "double_blocks.0.txt_mlp.0": "double_blocks.0.txt_mlp.fc1",
        "double_blocks.0.img_mod.lin": "double_blocks.0.img_mod.linear",
        "single_blocks.0.linear1": "single_blocks.0.linear1",
        "single_blocks.0.modulation.lin": "single_blocks.0.modulation.linear",
        "final_layer.adaLN_modulation.1": "final_layer.modulation.linear",
    }
    mods = dict(flux.named_modules())
    g = torch.Generator().manual_seed(8)
    sd: dict[str, Tensor] = {}
    updates = []
    for theirs, ours in bfl.items():
        down, up = pair(g, mods[ours].weight)
        sd |= kohya_keys("lora_unet_", theirs, down, up, ALPHA)
        updates.append((ours, down, up, ALPHA / RANK, slice(None)))
    res = resolve_lora(parse_lora(sd), flux)
    assert res.unmatched == ()
    x, t, cond = flux_inputs()
    with torch.no_grad(), apply_loras(flux, [(res, 1.0)]):
        got = flux(x, t, cond)
    torch.testing.assert_close(got, by_hand(flux, updates)(x, t, cond), rtol=1e-5, atol=1e-5)


def test_flux_kohya_lora_equals_diffusers_converted_lora_at_full_width() -> None:
    """Oracle: diffusers' kohya-FLUX converter splits fused qkv / linear1 LoRAs into to_q/to_k/to_v/proj_mlp
    pairs (and bakes alpha in); resolving the converted file gives, module by module, exactly the weight
    update of resolving the original (full FLUX width, one block of each kind, on the meta device; the
    updates are compared through their product with a random vector)."""
    import dataclasses

    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    from latentworks.checkpoints.keymaps.flux_bfl import flux_bfl_module_map

    cfg = dataclasses.replace(FLUX_PRESETS["flux-dev"], double_depth=1, single_depth=1)
    with torch.device("meta"):
        net = Flux(cfg)
    mods = dict(net.named_modules())
    g = torch.Generator().manual_seed(14)
    sd: dict[str, Tensor] = {}
    for ours, bfl in flux_bfl_module_map(cfg).items():
        if isinstance(mods.get(ours), nn.Linear) and "blocks" in ours:
            w = mods[ours].weight
            k = "lora_unet_" + bfl.replace(".", "_")
            sd[f"{k}.lora_down.weight"] = torch.randn(2, w.shape[1], generator=g)
            sd[f"{k}.lora_up.weight"] = torch.randn(w.shape[0], 2, generator=g)
            sd[f"{k}.alpha"] = torch.tensor(1.0)  # scale 1/2
    ours_res = resolve_lora(parse_lora(dict(sd)), net)
    theirs_res = resolve_lora(parse_lora(_convert_kohya_flux_lora_to_diffusers(dict(sd))), net)
    assert len(ours_res.patches) == 13 and len(theirs_res.patches) == 20  # qkv x2 and linear1 split up
    assert ours_res.unmatched == theirs_res.unmatched == ()

    def delta_times(res: object, module: str, v: Tensor) -> Tensor:
        """(sum of the module's updates) @ v, without forming the (out, in) matrix."""
        out = torch.zeros(mods[module].weight.shape[0])
        for p in res.patches:  # type: ignore[attr-defined]
            if p.module == module:
                out[slice(None) if p.rows is None else slice(*p.rows)] += p.scale * (p.up @ (p.down @ v))
        return out

    for module in {p.module for p in ours_res.patches}:
        v = torch.randn(mods[module].weight.shape[1], generator=g)
        torch.testing.assert_close(delta_times(theirs_res, module, v), delta_times(ours_res, module, v))


def test_sd3_peft_lora_lands_on_qkv_row_slices() -> None:
    from latentworks.models.mmdit import PRESETS as MMDIT_PRESETS
    from latentworks.models.mmdit import MMDiT

    torch.manual_seed(0)
    model = perturbed(MMDiT(MMDIT_PRESETS["tiny"]))
    d = model.config.width
    mods = dict(model.named_modules())
    g = torch.Generator().manual_seed(12)
    targets = {
        "transformer_blocks.0.attn.to_k": ("blocks.0.x_attn.qkv", slice(d, 2 * d)),
        "transformer_blocks.0.attn.add_v_proj": ("blocks.0.context_attn.qkv", slice(2 * d, 3 * d)),
        "transformer_blocks.0.ff.net.2": ("blocks.0.x_mlp.fc2", slice(None)),
    }
    sd: dict[str, Tensor] = {}
    updates = []
    for theirs, (ours, rows) in targets.items():
        down, up = pair(g, mods[ours].weight, rows=mods[ours].weight[rows].shape[0])
        sd |= peft_keys("transformer.", theirs, down, up)
        updates.append((ours, down, up, 1.0, rows))
    res = resolve_lora(parse_lora(sd), model)
    assert res.unmatched == ()
    cfg = model.config
    gi = torch.Generator().manual_seed(1)
    x = torch.randn(1, cfg.in_channels, 8, 8, generator=gi)
    cond = Conditioning(
        tokens=torch.randn(1, 3, cfg.context_dim, generator=gi),
        pooled=torch.randn(1, cfg.pooled_dim, generator=gi),
    )
    t = torch.tensor([400.0])
    with torch.no_grad():
        with apply_loras(model, [(res, 1.0)]):
            got = model(x, t, cond)
        want = by_hand(model, updates)(x, t, cond)
        base = model(x, t, cond)
    assert (want - base).abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------- text encoder


@pytest.fixture(scope="module")
def clip_text() -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return CLIPTextModel(cfg).eval().requires_grad_(False)


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_text_encoder_lora_with_its_own_strength(clip_text: nn.Module, unet: UNet, fmt: str) -> None:
    """Files name HF modules with the ``text_model.`` level that transformers 5 no longer has; both resolve."""
    mods = dict(clip_text.named_modules())
    g = torch.Generator().manual_seed(9)
    names = [
        "encoder.layers.0.self_attn.q_proj",
        "encoder.layers.1.self_attn.out_proj",
        "encoder.layers.1.mlp.fc1",
    ]
    if "text_model.encoder.layers.0.self_attn.q_proj" in mods:  # transformers < 5
        names = [f"text_model.{n}" for n in names]
    sd: dict[str, Tensor] = {}
    updates = []
    for name in names:
        down, up = pair(g, mods[name].weight)
        in_file = name if name.startswith("text_model.") else f"text_model.{name}"
        if fmt == "kohya":
            sd |= kohya_keys("lora_te_", in_file, down, up, ALPHA)
            updates.append((name, down, up, ALPHA / RANK, slice(None)))
        else:
            sd |= peft_keys("text_encoder.", in_file, down, up)
            updates.append((name, down, up, 1.0, slice(None)))
    unet_sd, unet_updates = unet_lora(unet, seed=10, fmt=fmt)
    lora = parse_lora(sd | unet_sd, name="both")
    resolved = resolve_loras(lora, unet, [clip_text])
    assert resolved["text"].unmatched == () and len(resolved["text"].patches) == 3
    assert len(resolved["unet"].patches) == len(UNET_TARGETS)
    ids = torch.tensor([[0, 5, 17, 42, 99, 1]])
    with torch.no_grad():
        base = clip_text(input_ids=ids).last_hidden_state
        expected = by_hand(clip_text, scaled(updates, 0.3))(input_ids=ids).last_hidden_state
        with apply_loras(clip_text, [(resolved["text"], 0.3)]), apply_loras(unet, [(resolved["unet"], 1.0)]):
            got = clip_text(input_ids=ids).last_hidden_state
        assert torch.equal(clip_text(input_ids=ids).last_hidden_state, base)
    assert (expected - base).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_lora_text_encoder_patches_each_branch_of_a_prompt_encoder_only_while_encoding(
    clip_text: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lora_te1_`` keys go to the first CLIP branch, ``lora_te2_`` to the second; between calls the
    shared encoder is untouched, and stacking wrappers keeps one wrapper with both LoRAs."""
    import types

    from latentworks.checkpoints.lora import LoraTextEncoder, text_encoder_modules

    second = copy.deepcopy(clip_text)
    ids = torch.tensor([[0, 5, 17, 42, 99, 1]])

    class Prompts:  # the shape of models/text/families.PromptEncoder: CLIP branches and an optional T5
        clips = [types.SimpleNamespace(model=clip_text), types.SimpleNamespace(model=second)]
        t5 = None

        def encode(self, prompts: list[str]) -> Tensor:
            with torch.no_grad():
                return torch.cat([c.model(input_ids=ids).last_hidden_state for c in self.clips], -1)

    enc = Prompts()
    assert text_encoder_modules(enc) == [clip_text, second, None]
    name = next(n for n, m in clip_text.named_modules() if n.endswith("layers.0.self_attn.v_proj"))
    w = dict(clip_text.named_modules())[name].weight
    g = torch.Generator().manual_seed(15)
    l1 = parse_lora(kohya_keys("lora_te1_", name, *pair(g, w), ALPHA), name="one")
    l2 = parse_lora(kohya_keys("lora_te2_", name, *pair(g, w), ALPHA), name="two")
    plain = enc.encode([""])
    wrapped = LoraTextEncoder(LoraTextEncoder(enc, [(l1, 1.0)]), [(l2, 0.5)])
    assert wrapped.base is enc and [s for _, s in wrapped.loras] == [1.0, 0.5]
    got = wrapped.encode([""])
    d = plain.shape[-1] // 2
    a = l1.modules[next(iter(l1.modules))]
    b = l2.modules[next(iter(l2.modules))]
    with torch.no_grad():
        want1 = by_hand(clip_text, [(name, a.down, a.up, ALPHA / RANK, slice(None))])(
            input_ids=ids
        ).last_hidden_state
        want2 = by_hand(second, [(name, b.down, b.up, 0.5 * ALPHA / RANK, slice(None))])(
            input_ids=ids
        ).last_hidden_state
    torch.testing.assert_close(got[..., :d], want1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[..., d:], want2, rtol=1e-5, atol=1e-5)
    assert torch.equal(enc.encode([""]), plain)
    # the LoRAs were resolved once, on the first call; later calls reuse it and agree exactly
    import latentworks.checkpoints.lora as lora_mod

    def no_resolving(*args: object, **kwargs: object) -> None:
        raise AssertionError("resolve_lora called again")

    monkeypatch.setattr(lora_mod, "resolve_lora", no_resolving)
    assert torch.equal(wrapped.encode([""]), got)


def test_qwenimage_lora_in_diffusers_names_lands_on_fused_rows() -> None:
    """Qwen-Image LoRAs (ComfyUI and diffusers share the diffusers names) resolve onto our fused q/k/v rows and
    MLP layers, and change the output exactly as the update done by hand."""
    from latentworks.models.qwenimage import PRESETS as QWEN_PRESETS
    from latentworks.models.qwenimage import QwenImage

    torch.manual_seed(0)
    model = perturbed(QwenImage(QWEN_PRESETS["tiny"]))
    d = model.config.width
    mods = dict(model.named_modules())
    g = torch.Generator().manual_seed(13)
    targets = {
        "transformer_blocks.0.attn.to_k": ("blocks.0.img_attn.qkv", slice(d, 2 * d)),
        "transformer_blocks.1.attn.add_v_proj": ("blocks.1.txt_attn.qkv", slice(2 * d, 3 * d)),
        "transformer_blocks.0.img_mlp.net.2": ("blocks.0.img_mlp.fc2", slice(None)),
    }
    sd: dict[str, Tensor] = {}
    updates = []
    for theirs, (ours, rows) in targets.items():
        down, up = pair(g, mods[ours].weight, rows=mods[ours].weight[rows].shape[0])
        sd |= peft_keys("diffusion_model.", theirs, down, up)
        updates.append((ours, down, up, 1.0, rows))
    res = resolve_lora(parse_lora(sd), model)
    assert res.unmatched == ()
    cfg = model.config
    gi = torch.Generator().manual_seed(1)
    x = torch.randn(1, cfg.in_channels, 8, 8, generator=gi)
    cond = Conditioning(tokens=torch.randn(1, 5, cfg.context_dim, generator=gi))
    t = torch.tensor([0.6])
    with torch.no_grad():
        with apply_loras(model, [(res, 1.0)]):
            got = model(x, t, cond)
        want = by_hand(model, updates)(x, t, cond)
        base = model(x, t, cond)
    assert (want - base).abs().max() > 1e-4
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
