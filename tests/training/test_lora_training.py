"""``train-lora``: the file it writes is what it trained, in the layout the loaders (ours, diffusers') read.

- Round trip: a few steps on a tiny random model, the file loaded through ``checkpoints.lora`` patches each
  weight to ``W + alpha / rank * up @ down`` computed by hand from the file, and the patched model computes
  what the trained adapters (forward hooks) computed.
- Names per family: for tiny U-Net (SD1 diffusers names, SDXL LDM names), FLUX (BFL), SD3 (SAI) and DiT
  networks, every module of the file resolves and the patched model equals the adapted one.
- Oracle: the SD 1.5-layout file goes through diffusers' own kohya converter onto a diffusers
  ``UNet2DConditionModel`` with the same random weights, which then gives our patched model's output.
- Resume: 2 steps + ``--resume`` 2 steps write the same file as 4 steps straight.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from latentworks.checkpoints.lora import apply_loras, load_lora, parse_lora, resolve_lora
from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.latent_formats import LatentFormat
from latentworks.models.autoencoder import Autoencoder, AutoencoderConfig
from latentworks.models.unet import PRESETS as UNET_PRESETS
from latentworks.models.unet import UNet
from latentworks.pipelines.loading import ModelFolder, sampling_from_meta
from latentworks.pipelines.text_to_image import Pipeline
from latentworks.training.checkpoint import load_training_state
from latentworks.training.lora import (
    LoraNetwork,
    LoraTrainConfig,
    file_module_names,
    lora_state_dict,
    lora_targets,
    train_lora,
)

sys.path.insert(0, str(Path(__file__).parent))
from helpers import HashTextEncoder  # noqa: E402


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval().requires_grad_(False)


def tiny_pipe() -> Pipeline:
    """A tiny random latentworks model (flow, U-Net, 4-channel f2 VAE, 16px) with a hash text encoder."""
    torch.manual_seed(0)
    cfg = UNET_PRESETS["tiny"]
    net = perturbed(UNet(cfg))
    vae = Autoencoder(
        AutoencoderConfig(latent_channels=4, channels=(16, 16), layers_per_block=1, norm_groups=8)
    )
    meta = {
        "family": "latentworks",
        "denoiser": {
            "architecture": "unet",
            "prediction": "flow",
            "sampling": {"kind": "flow", "shift": 1.0},
        },
        "resolution": [16, 16],
        "defaults": {"guidance": 2.0},
    }
    mf = ModelFolder(
        path=Path("tiny"),
        meta=meta,
        denoiser_net=net,
        vae=vae.eval().requires_grad_(False),
        latent_format=LatentFormat(channels=4, scale_factor=0.5, shift_factor=0.1),
        model_sampling=sampling_from_meta(meta["denoiser"]["sampling"]),
    )
    return Pipeline(mf, HashTextEncoder(dim=cfg.context_dim, max_length=4))


def image_folder(path: Path, n: int = 4) -> Path:
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path / f"{i}.png")
        (path / f"{i}.txt").write_text(f"thing {i}, fluent style")
    return path


def config(tmp: Path, data: Path, **kw: object) -> LoraTrainConfig:
    base = dict(
        data=data, out=tmp / "run", rank=4, alpha=2.0, conv_rank=2, conv_alpha=3.0, steps=3, batch_size=2,
        lr=1e-2, sample_every=1000, checkpoint_every=1000, save_precision="fp32", progress=False,
    )  # fmt: skip
    return LoraTrainConfig(**(base | kw))  # type: ignore[arg-type]


def unet_inputs(cfg: object, size: int = 8) -> tuple[Tensor, Tensor, Conditioning]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, size, size, generator=g)  # type: ignore[attr-defined]
    cond = Conditioning(tokens=torch.randn(2, 5, cfg.context_dim, generator=g))  # type: ignore[attr-defined]
    return x, torch.tensor([10.0, 700.0]), cond


def test_trained_lora_round_trips_through_the_loader(tmp_path: Path) -> None:
    pipe = tiny_pipe()
    net = pipe.model.denoiser_net
    before = {k: v.clone() for k, v in net.state_dict().items()}
    r = train_lora(config(tmp_path, image_folder(tmp_path / "data")), pipe=pipe)
    assert r.step == 3 and all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # base frozen

    lora = load_lora(r.lora_file)
    res = resolve_lora(lora, net)
    assert res.unmatched == () and len(res.patches) == len(lora.modules) > 20
    assert any(w.down.ndim == 4 and w.down.shape[-1] == 3 for w in lora.modules.values())  # LoCon convs
    ups = [w.up for w in lora.modules.values()]
    assert all(u.abs().max() > 0 for u in ups)  # every adapter trained away from its zero init

    mods = dict(net.named_modules())
    with apply_loras(net, [(res, 1.0)]):
        for p in res.patches:  # W' = W + alpha / rank * up @ down, by hand from the file's tensors
            w = lora.modules[p.source]
            base = before[f"{p.module}.weight"]
            rank = w.down.shape[0]
            want = base + (w.alpha / rank) * (w.up.flatten(1) @ w.down.flatten(1)).reshape(base.shape)  # type: ignore[operator]
            torch.testing.assert_close(mods[p.module].weight, want, rtol=0, atol=1e-6)
        x, t, cond = unet_inputs(net.config)
        patched = net(x, t, cond)

    # the adapters as trained (restored from the run's checkpoint) compute the same as the patched weights
    names = file_module_names(net, "latentworks")
    adapted = LoraNetwork(net, {n: v for n, v in _targets(net, r.run_dir).items() if n in names})
    load_training_state(
        r.run_dir / "checkpoints" / "last.safetensors", modules={"lora": adapted.adapters}, optimizers={}
    )
    try:
        torch.testing.assert_close(adapted(x, t, cond), patched, rtol=1e-5, atol=1e-5)
    finally:
        adapted.remove()
    torch.testing.assert_close(net(x, t, cond), _base_output(before, net, x, t, cond))


def _targets(net: nn.Module, run: Path) -> dict[str, tuple[int, float]]:
    import json

    c = json.loads((run / "config.json").read_text())["train"]
    return lora_targets(
        net, rank=c["rank"], alpha=c["alpha"], conv_rank=c["conv_rank"], conv_alpha=c["conv_alpha"]
    )


def _base_output(sd: dict[str, Tensor], net: nn.Module, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
    ref = UNet(net.config)  # type: ignore[arg-type]
    ref.load_state_dict(sd)
    return ref.eval()(x, t, cond)


def test_resume_writes_the_same_lora_as_a_straight_run(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "data")
    pipe = tiny_pipe()
    straight = train_lora(config(tmp_path, data, out=tmp_path / "a", steps=4, conv_rank=0), pipe=pipe)
    train_lora(config(tmp_path, data, out=tmp_path / "b", steps=2, conv_rank=0), pipe=pipe)
    resumed = train_lora(
        config(tmp_path, data, out=tmp_path / "b", steps=4, conv_rank=0, resume=True), pipe=pipe
    )
    a, b = load_lora(straight.lora_file).modules, load_lora(resumed.lora_file).modules
    assert a.keys() == b.keys() and all(
        torch.equal(a[k].up, b[k].up) and torch.equal(a[k].down, b[k].down) for k in a
    )


def random_adapters(net: nn.Module, family: str, conv_rank: int = 0) -> tuple[LoraNetwork, dict[str, str]]:
    names = file_module_names(net, family)
    targets = lora_targets(net, rank=3, alpha=1.5, conv_rank=conv_rank, conv_alpha=2.0)
    assert set(targets) <= set(names)
    lora = LoraNetwork(net, targets)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in lora.adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return lora, names


def _family_cases() -> list[tuple[str, str, str]]:
    return [("unet", "sd1", "lora_unet_down_blocks_"), ("unet", "sdxl", "lora_unet_input_blocks_"),
            ("flux", "flux-dev", "lora_unet_double_blocks_"), ("mmdit", "sd3", "lora_unet_joint_blocks_"),
            ("dit", "latentworks", "lora_unet_blocks_"), ("zimage", "z-image", "lora_unet_layers_"),
            ("qwenimage", "qwen-image", "lora_unet_transformer_blocks_")]  # fmt: skip


@pytest.mark.parametrize(("arch", "family", "prefix"), _family_cases())
def test_file_names_resolve_for_each_family_and_patch_like_the_adapters(
    arch: str, family: str, prefix: str
) -> None:
    from latentworks.models.dit import PRESETS as DIT_PRESETS
    from latentworks.models.dit import DiT
    from latentworks.models.flux import PRESETS as FLUX_PRESETS
    from latentworks.models.flux import Flux
    from latentworks.models.mmdit import PRESETS as MMDIT_PRESETS
    from latentworks.models.mmdit import MMDiT
    from latentworks.models.qwenimage import PRESETS as QWEN_PRESETS
    from latentworks.models.qwenimage import QwenImage
    from latentworks.models.zimage import PRESETS as ZIMAGE_PRESETS
    from latentworks.models.zimage import ZImage

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    net: nn.Module
    if arch == "unet":
        net = perturbed(UNet(UNET_PRESETS["tiny"]))
        x, t, cond = unet_inputs(net.config)  # type: ignore[arg-type]
    else:
        cls, cfg = {
            "flux": (Flux, FLUX_PRESETS),
            "mmdit": (MMDiT, MMDIT_PRESETS),
            "dit": (DiT, DIT_PRESETS),
            "zimage": (ZImage, ZIMAGE_PRESETS),
            "qwenimage": (QwenImage, QWEN_PRESETS),
        }[arch]
        net = perturbed(cls(cfg["tiny"]))
        c = net.config
        x = torch.randn(2, c.in_channels, 8, 8, generator=g)  # type: ignore[union-attr]
        extra = {"guidance": torch.tensor([3.5, 3.5])} if arch == "flux" else {}
        pooled_dim = getattr(c, "pooled_dim", 0)  # Z-Image and Qwen-Image read no pooled vector
        cond = Conditioning(
            tokens=torch.randn(2, 3, c.context_dim, generator=g),  # type: ignore[union-attr]
            pooled=torch.randn(2, pooled_dim, generator=g) if pooled_dim else None,
            extra=extra,
        )
        t = torch.tensor([0.3, 0.8]) if arch in ("flux", "zimage") else torch.tensor([300.0, 800.0])
    lora, names = random_adapters(net, family, conv_rank=2 if arch == "unet" else 0)
    try:
        adapted = lora(x, t, cond)
        sd = lora_state_dict(lora, names, torch.float32)
    finally:
        lora.remove()
    assert all(k.startswith(prefix) or not k.startswith("lora_unet_blocks") for k in sd)
    assert any(k.startswith(prefix) for k in sd)
    res = resolve_lora(parse_lora(sd), net)
    assert res.unmatched == () and len(res.patches) == len(sd) // 3
    assert {p.module for p in res.patches} == {
        n for n, _ in lora.named_adapters()
    }  # each lands where trained
    with apply_loras(net, [(res, 1.0)]):
        patched = net(x, t, cond)
    assert (adapted - net(x, t, cond)).abs().max() > 1e-3  # the LoRA changes the output
    torch.testing.assert_close(patched, adapted, rtol=1e-4, atol=1e-5)


SD15_TINY = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[32, 64],
    layers_per_block=1,
    cross_attention_dim=24,
    attention_head_dim=2,
    norm_num_groups=8,
    flip_sin_to_cos=True,
    freq_shift=0,
)


def test_sd15_layout_file_loads_into_diffusers_unet_with_the_same_output() -> None:
    """Oracle: diffusers' kohya converter (what its ``load_lora_weights`` runs on kohya files) maps every key
    of our SD 1.5-layout file to a layer of a diffusers ``UNet2DConditionModel``; that U-Net with the update
    ``alpha / rank * B @ A`` added to each of those layers gives our patched U-Net's output."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers

    from latentworks.checkpoints.keymaps.diffusers_configs import unet_config_from_diffusers
    from latentworks.checkpoints.keymaps.sd_diffusers import unet_from_diffusers

    torch.manual_seed(0)
    ref = perturbed(diffusers.UNet2DConditionModel(**SD15_TINY))
    cfg = unet_config_from_diffusers(dict(ref.config))
    ours = UNet(cfg)
    ours.load_state_dict(unet_from_diffusers(ref.state_dict(), cfg), strict=True)
    ours.eval().requires_grad_(False)
    lora, names = random_adapters(ours, "sd1", conv_rank=2)
    x, t, cond = unet_inputs(cfg)
    try:
        sd = lora_state_dict(lora, names, torch.float32)
    finally:
        lora.remove()
    assert all(
        k.startswith(("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_")) for k in sd
    )

    converted, alphas = _convert_non_diffusers_lora_to_diffusers(dict(sd))
    # diffusers' names: ``unet.<module>.lora.down.weight``, attention projections in its processor layout
    # ``unet.<attn>.processor.to_q_lora.down.weight`` (its loader maps those onto ``<attn>.to_q``)
    pattern = re.compile(r"^unet\.(.+?)(?:\.processor\.(to_q|to_k|to_v|to_out)_lora|\.lora)\.down\.weight$")
    applied = 0
    with torch.no_grad():
        for key, down in converted.items():
            m = pattern.match(key)
            if m is None:
                continue
            module = m[1] if m[2] is None else f"{m[1]}.{m[2]}" + (".0" if m[2] == "to_out" else "")
            up = converted[key.replace("down.weight", "up.weight")]
            alpha = alphas.get(key + ".alpha", alphas.get(f"unet.{m[1]}.alpha"))
            w = ref.get_submodule(module).weight
            w += (alpha / down.shape[0]) * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
            applied += 1
        want = ref(x, t, encoder_hidden_states=cond.tokens).sample
    assert applied == len(sd) // 3  # every module of the file found its diffusers layer
    with apply_loras(ours, [(resolve_lora(parse_lora(sd), ours), 1.0)]):
        got = ours(x, t, cond)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_cli_refuses_a_non_empty_out_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from latentworks.cli import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "lora.safetensors").write_bytes(b"keep me")
    data = image_folder(tmp_path / "data")
    assert main(["train-lora", "--data", str(data), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "lora.safetensors").read_bytes() == b"keep me"


def test_a_model_of_an_untrained_objective_is_refused_with_what_works(tmp_path: Path) -> None:
    pipe = tiny_pipe()
    pipe.model.meta["denoiser"]["prediction"] = "edm"  # a research model's objective train-lora lacks
    with pytest.raises(
        ValueError, match=r"latentworks model: it predicts 'edm'.*eps, v, flow-prediction models"
    ):
        train_lora(config(tmp_path, image_folder(tmp_path / "data")), pipe=pipe)
    assert not (tmp_path / "run").exists()  # refused before writing anything


def test_config_rejects_bad_rank_with_a_message(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rank must be >= 1"):
        dataclasses.replace(config(tmp_path, tmp_path), rank=0)


def test_sd1_checkpoint_trains_end_to_end_with_its_own_encoder_and_objective(tmp_path: Path) -> None:
    """A tiny SD 1.x-layout checkpoint (CLIP text encoder, eps prediction, discrete schedule) through the same
    path: the file has SD1's kohya names and every module resolves on the checkpoint's U-Net."""
    from latentworks.pipelines.loading import model_from_parts, text_encoder_from_parts
    from support.checkpoints import tiny_sd1_parts

    parts = tiny_sd1_parts(tmp_path / "tiny-sd1.safetensors")
    pipe = Pipeline(model_from_parts(parts), text_encoder_from_parts(parts))
    assert pipe.model.prediction == "eps"
    data = image_folder(tmp_path / "data")
    r = train_lora(config(tmp_path, data, resolution=16, steps=2, conv_rank=0), pipe=pipe)
    lora = load_lora(r.lora_file)
    sd1_prefixes = ("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_")
    assert all(m.startswith(sd1_prefixes) for m in lora.modules)
    res = resolve_lora(lora, pipe.model.denoiser_net)
    assert res.unmatched == () and len(res.patches) == len(lora.modules) > 0
    assert lora.metadata["latentworks_family"] == "sd1"


def test_qwen_image_file_loads_through_diffusers_converter_with_the_same_weights() -> None:
    """Oracle: diffusers' converter for non-diffusers Qwen-Image LoRAs (what its ``load_lora_weights`` runs on
    kohya files) maps every module of our file, the fused q/k/v written as ``to_q``/``to_k``/``to_v`` row
    slices included, to a layer of diffusers' ``QwenImageTransformer2DModel``; that model with ``B @ A`` added
    to each of those layers has, converted to our layout, the weights our loader's patching gives."""
    pytest.importorskip("diffusers")
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_qwen_lora_to_diffusers

    from latentworks.checkpoints.keymaps.qwenimage_diffusers import qwenimage_from_diffusers
    from oracle.test_qwenimage_oracle import ours_from, reference
    from support.qwenimage import TRANSFORMER

    ref = reference(TRANSFORMER)
    ours = ours_from(copy.deepcopy(ref), TRANSFORMER).requires_grad_(False)  # (it assigns, sharing tensors)
    lora, names = random_adapters(ours, "qwen-image")
    try:
        sd = lora_state_dict(lora, names, torch.float32)
    finally:
        lora.remove()
    assert any(k.endswith("_attn_to_q.lora_down.weight") for k in sd)

    converted = _convert_non_diffusers_qwen_lora_to_diffusers(dict(sd))
    applied = 0
    with torch.no_grad():
        for key, a in converted.items():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
            b = converted[key.replace(".lora_A.weight", ".lora_B.weight")]
            ref.get_submodule(module).weight += b @ a  # diffusers folds alpha / rank into A and B
            applied += 1
        want = qwenimage_from_diffusers(ref.state_dict(), TRANSFORMER)
    assert applied == len(sd) // 3  # every module of the file found its diffusers layer
    with apply_loras(ours, [(resolve_lora(parse_lora(sd), ours), 1.0)]):
        got = {k: v.clone() for k, v in ours.state_dict().items()}
    assert got.keys() == want.keys()
    bad = [k for k in want if not torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-6)]
    assert not bad, bad
